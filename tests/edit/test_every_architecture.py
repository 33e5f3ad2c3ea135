"""Surgery on every architecture family: SceneNet, LeNet-5, AlexNet, VGG-16, ResNet-18, ResNet-50, an NNX ConvNet.

For each family and layer of the table in ``architectures.py`` (first layers, dense layers read
through flattened positions, residual inner units and residual streams):

1. zeroing every unit through the edit (folded into the weights, or applied where the layer
   is sown) is zeroing the layer's output;
2. transplanting units of A into the same slots of A changes nothing;
3. transplanting one unit of A into B changes exactly its slices, at its slot;
4. a copy of A with the layer's units permuted computes the same function, the matching
   recovers the permutation, and transplanting a unit of A into the copy is the identity
   only at its matched slot;
5. (a family per kind) a hand-planted unit carries one class: ablating it takes that class
   to chance and leaves the others.

Where a model refuses an edit (a residual stream's transplant, the ResNet-18 stem's fold),
the refusal and its reason are what is tested.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from architectures import (
    CLASSES,
    FAMILY_LAYERS,
    LANE,
    MATCH_BATCH,
    PLANTED,
    PLANTED_CLASS,
    build,
    plant,
    planted_images,
)

from dissectjax.analysis.ablation import ClassCounts, class_counts, layer_data
from dissectjax.edit import UnitEdit, fold, layer_matching, match, transplant
from dissectjax.edit.matching import Correlation
from dissectjax.errors import DissectError
from dissectjax.models.wiring import from_unit_axis, read_slice, replace_slice, unit_axis

LAYER_IDS = [f"{family}-{layer}" for family, layer in FAMILY_LAYERS]


def leaves(tree) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def changed(before, after) -> set[str]:
    """The paths of the leaves whose values differ."""
    a, b = leaves(before), leaves(after)
    assert a.keys() == b.keys()
    return {k for k in a if not np.array_equal(a[k], b[k])}


def keystr(where) -> str:
    return "".join(f"[{k!r}]" for k in (where.collection, *where.path))


def close(got, want) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def units_along(variables, where) -> int:
    view, axis = unit_axis(np.asarray(read_slice(variables, where)), where)
    return view.shape[axis]


def identity_matchings(variables, w) -> dict:
    """transplant's keywords for moving units between instances whose neighbouring layers line up:
    identity input matching where the layer reads a previous layer, and the outgoing weights (with
    an identity output matching where they feed a next layer) wherever the model allows them."""
    kwargs = {}
    if w.previous is not None and w.inputs is not None:
        kwargs["input_matching"] = np.arange(units_along(variables, w.inputs))
    if w.outgoing_refused is None:
        kwargs["outgoing"] = True
        if w.outgoing_outputs is not None:
            kwargs["output_matching"] = np.arange(units_along(variables, w.outgoing_outputs[0]))
    return kwargs


def permuted(variables, w, perm: np.ndarray) -> dict:
    """The variables with the layer's unit u moved to slot perm[u]: every slice that holds the units
    (incoming), reads them (outgoing) or carries their channels inside their computation (internal)."""
    out, seen = variables, set()
    for where in (*w.incoming, *w.internal, *w.outgoing):
        if where in seen:
            continue
        seen.add(where)
        x = np.asarray(read_slice(out, where))
        view, axis = unit_axis(x, where)
        out = replace_slice(out, where, from_unit_axis(np.take(view, np.argsort(perm), axis=axis), where, x.shape))
    return out


def matching(inst, va, vb, layer: str):
    """B's slot for each of A's units of ``layer`` (NNX modules have no ``apply``: their sown maps
    are correlated through the NNX bridge)."""
    if inst.split is None:
        return layer_matching(inst.model, va, inst.model, vb, layer, inst.match_images)
    corr = Correlation()
    corr.add(inst.activations(va, layer), inst.activations(vb, layer))
    return match(corr.result())


@pytest.mark.parametrize("family, layer", FAMILY_LAYERS, ids=LAYER_IDS)
def test_zeroing_every_unit_is_zeroing_the_layer(family, layer):
    inst = build(family)
    w = inst.model.unit_wiring(layer)
    edit = UnitEdit.zero(layer, range(w.units), w.units)
    zeroed = inst.logits_with_layer_zeroed(inst.a, layer)
    assert np.abs(zeroed - inst.logits(inst.a)).max() > 1e-3  # the layer matters
    if inst.split is None:  # linen: also the edit where the layer is sown
        close(inst.logits_with_edit(inst.a, edit), zeroed)
    if w.fold_refused:
        with pytest.raises(DissectError, match=re.escape(w.fold_refused)):
            fold(inst.model, inst.a, edit)
    else:
        close(inst.logits(fold(inst.model, inst.a, edit)), zeroed)


@pytest.mark.parametrize("family, layer", FAMILY_LAYERS, ids=LAYER_IDS)
def test_transplant_into_itself_is_the_identity(family, layer):
    inst = build(family)
    w = inst.model.unit_wiring(layer)
    units = [0, w.units // 2, w.units - 1]
    if w.transplant_refused:
        with pytest.raises(DissectError, match=re.escape(w.transplant_refused)):
            transplant(inst.model, inst.a, inst.a, layer, units, units)
        return
    out = transplant(inst.model, inst.a, inst.a, layer, units, units, **identity_matchings(inst.a, w))
    assert changed(inst.a, out) == set()
    if w.outgoing_refused:
        with pytest.raises(DissectError, match=re.escape(w.outgoing_refused)):
            transplant(inst.model, inst.a, inst.a, layer, units, units, outgoing=True)


@pytest.mark.parametrize("family, layer", FAMILY_LAYERS, ids=LAYER_IDS)
def test_transplant_changes_exactly_the_units_slices(family, layer):
    inst = build(family)
    w = inst.model.unit_wiring(layer)
    u, slot = 1, w.units - 2
    if w.transplant_refused:
        with pytest.raises(DissectError, match=re.escape(w.transplant_refused)):
            transplant(inst.model, inst.a, inst.b, layer, [u], [slot])
        return
    kwargs = identity_matchings(inst.b, w)
    kwargs.pop("input_matching", None)
    out = transplant(inst.model, inst.a, inst.b, layer, [u], [slot], **kwargs)
    moved = (*w.incoming, *(w.outgoing if kwargs.get("outgoing") else ()))
    want = inst.b
    for where in moved:  # B's array with A's unit u at the slot, along the unit axis (split by positions)
        b = np.array(read_slice(inst.b, where))
        view_b, axis = unit_axis(b, where)
        view_a, _ = unit_axis(np.asarray(read_slice(inst.a, where)), where)
        view_b = view_b.copy()
        np.moveaxis(view_b, axis, 0)[slot] = np.moveaxis(view_a, axis, 0)[u]
        want = replace_slice(want, where, from_unit_axis(view_b, where, b.shape))
    got, expected = leaves(out), leaves(want)
    assert got.keys() == expected.keys()
    for key in got:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert changed(inst.b, out) == {keystr(where) for where in moved}  # every moved slice differed in B


def neighbours_read_the_permutation(inst, w, copy, perm: np.ndarray) -> None:
    """Moving a unit of a layer that reads this one (the next layer; in a ResNet, the inner layers
    whose previous layer this is) from A into the copy, its inputs reordered by the permutation
    (``input_matching``), or a unit of the previous layer with its outgoing weights reordered by it
    (``output_matching``), is the identity on the copy's variables; without the matching it is not."""
    model, a = inst.model, inst.a
    readers = [w.next] if w.next is not None else []
    readers += [x for x in getattr(model, "inner_layers", ()) if model.unit_wiring(x).previous == w.layer]
    for reader in readers:
        rw = model.unit_wiring(reader)
        if rw.transplant_refused or rw.inputs is None:
            continue
        assert changed(copy, transplant(model, a, copy, reader, [0], [0], input_matching=perm)) == set()
        assert changed(copy, transplant(model, a, copy, reader, [0], [0])) != set()
    pw = model.unit_wiring(w.previous) if w.previous is not None else None
    if pw is not None and not pw.transplant_refused and pw.outgoing_refused is None and pw.outgoing_outputs:
        kwargs = identity_matchings(a, pw)
        matched = transplant(model, a, copy, w.previous, [0], [0], **{**kwargs, "output_matching": perm})
        assert changed(copy, matched) == set()
        assert changed(copy, transplant(model, a, copy, w.previous, [0], [0], **kwargs)) != set()


@pytest.mark.parametrize("family, layer", FAMILY_LAYERS, ids=LAYER_IDS)
def test_permuted_copy_is_matched_and_only_the_matched_slot_is_the_identity(family, layer):
    inst = build(family)
    w = inst.model.unit_wiring(layer)
    perm = np.random.default_rng(7).permutation(w.units)  # A's unit u sits in the copy's slot perm[u]
    copy = permuted(inst.a, w, perm)
    base = inst.logits(inst.a)
    close(inst.logits(copy), base)
    m = matching(inst, inst.a, copy, layer)
    # slot[u]: the copy's unit matched to A's unit u. A unit at one value on every image and position (a
    # random network's dead ReLU) correlates with nothing: those are paired among themselves, in any order
    live = np.asarray(inst.activations(inst.a, layer)).reshape(-1, w.units).std(axis=0) > 0
    assert live.sum() >= w.units // 2
    np.testing.assert_array_equal(m.slot[live], perm[live])
    assert sorted(m.slot[~live]) == sorted(perm[~live])
    u = int(np.flatnonzero(live & (perm != np.arange(w.units)))[0])
    neighbours_read_the_permutation(inst, w, copy, perm)
    if w.transplant_refused:
        with pytest.raises(DissectError, match=re.escape(w.transplant_refused)):
            transplant(inst.model, inst.a, copy, layer, [u], [m.slot[u]])
        return
    kwargs = identity_matchings(inst.a, w)
    matched = transplant(inst.model, inst.a, copy, layer, [u], [m.slot[u]], **kwargs)
    assert changed(copy, matched) == set()
    close(inst.logits(matched), base)
    unmatched = transplant(inst.model, inst.a, copy, layer, [u], [u], **kwargs)
    assert np.abs(inst.logits(unmatched) - base).max() > 1e-3


def fold_counts(inst, variables, layer, masks, images, labels) -> ClassCounts:
    """Per-class counts with each mask's units folded away (NNX modules: no ``layer_data``, which runs linen)."""
    confusion = np.zeros((len(masks), CLASSES, CLASSES), np.int64)
    for i, mask in enumerate(masks):
        pred = np.argmax(inst.logits(fold(inst.model, variables, UnitEdit.from_mask(layer, mask)), images), -1)
        np.add.at(confusion[i], (labels, pred), 1)
    return ClassCounts.from_confusion(confusion)


@pytest.mark.parametrize("family", PLANTED)
def test_a_planted_unit_alone_carries_its_class(family):
    """Ablating the planted unit (through layer_data and class_counts) takes its class to chance and
    moves every other class by under 0.02; ablating another unit of the layer leaves the class whole.

    The other classes are what the rest of the random network computes (labels: its predictions,
    the planted class left out), so an ablation that reached anything but the planted unit would
    move them; the planted class's three images, once unrecognised, are false positives of the
    others, at most 3 in 190 negatives each."""
    inst = build(family)
    layer = inst.family.planted
    images, is_class = planted_images(inst.family.shape, n_class=3, n_other=6 * MATCH_BATCH - 3)
    v = plant(inst, images, is_class)
    logits = inst.logits(v, images)
    np.testing.assert_array_equal(np.argmax(logits, -1) == PLANTED_CLASS, is_class)  # the class, and only on its images
    labels = np.where(is_class, PLANTED_CLASS, np.argmax(logits[:, :PLANTED_CLASS], -1))
    assert np.bincount(labels, minlength=CLASSES)[:PLANTED_CLASS].min() >= 180
    units = inst.model.unit_wiring(layer).units
    masks = np.zeros((3, units), np.float32)
    masks[1, LANE] = 1.0  # the planted unit
    masks[2, LANE - 1] = 1.0  # another unit of the layer
    if inst.split is None:
        data = layer_data(inst.model, v, layer, images, labels, batch=MATCH_BATCH)
        assert data.above == ("/" not in layer)  # a unit inside a residual block reruns the network whole
        counts = class_counts(inst.model, v, data, masks, chunk=3, batch=2 * MATCH_BATCH)
    else:
        counts = fold_counts(inst, v, layer, masks, images, labels)
    ba = counts.balanced_accuracy()
    others = [k for k in range(CLASSES) if k != PLANTED_CLASS]
    assert ba[0, PLANTED_CLASS] == 1.0
    assert ba[1, PLANTED_CLASS] == 0.5
    assert np.abs(ba[1, others] - ba[0, others]).max() < 0.02
    assert ba[2, PLANTED_CLASS] == 1.0


def test_linen_only_measures_refuse_an_nnx_module_with_a_clear_error():
    inst = build("nnx_convnet")
    with pytest.raises(DissectError, match="ConvNet is not a Flax linen module"):
        layer_matching(inst.model, inst.a, inst.model, inst.b, "conv2", inst.match_images)
    with pytest.raises(DissectError, match="ConvNet is not a Flax linen module"):
        layer_data(inst.model, inst.a, "conv2", inst.match_images, np.zeros(MATCH_BATCH, int))
