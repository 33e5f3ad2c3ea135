"""A sown layer's :class:`~dissectjax.models.wiring.Wiring`, inferred by tracing the model.

For a linen model that declares no ``unit_wiring(layer)``, :func:`traced_wiring` traces
``model.apply(variables, x, mutable=["intermediates"])`` with :func:`jax.make_jaxpr`, the
variables being traced inputs: input i of the program is leaf i of the variable tree, so
every value the program computes is known to depend on the images, on which variable leaves
(``collection``, ``path``), or on constants only. Calls (``jit``, ``custom_jvp_call``,
``custom_vjp_call``, ``checkpoint``) are inlined first, so ``relu`` and ``gelu`` are the
elementwise operations inside them.

A layer's value is an array with its U units on the last axis. Tracing follows where that
axis goes, through **unit-preserving** operations only: ones that treat every unit alike and
never combine two units (each keeps track of the axis, and of how many positions share it
after a flatten):

* elementwise operations (``max(x, 0)``, ``tanh``, ``convert_element_type``, ...) whose other
  operands are constants, or computed from variables only and varying at most along the unit
  axis (a bias; BatchNorm's ``(x - mean) * scale * rsqrt(var + eps) + bias``). Such per-unit
  operands are walked back to the variable leaves they come from (through broadcasts,
  reshapes that only add or drop size-1 axes, reductions over other axes), each leaf with
  its unit axis. Two image-dependent operands are allowed only where both come from the
  same value (``x * sigmoid(x)``, ``gelu``);
* pools (``reduce_window_*`` with a window of 1 on the unit axis), reductions over other
  axes (global average pooling), transposes, crops, pads of other axes;
* a reshape that keeps the unit axis whole, or flattens ``[B, h, w, U]`` to
  ``[B, h * w * U]`` (then h * w positions share the axis, unit fastest: a dense reader's
  slice gets ``positions=h * w``);
* concatenations and stacks along another axis of pieces that all come from the same
  value (an adaptive average pool stacks the means of crops).

**Backward** from the sown value this reaches the one ``conv_general_dilated`` or
``dot_general`` with a variable kernel that writes the units: ``incoming`` is the kernel's
output-feature axis and every per-unit leaf met on the way. **Forward** it reaches the
kernels that read the units: ``outgoing`` is each one's input-feature axis, and from each
reader's output the same walk finds the next sown layer (``next``, ``outgoing_outputs`` the
readers' output axis) or the model's output (a classifier: ``next`` and ``outgoing_outputs``
None). ``previous`` is the sown layer found backward from the incoming kernel's input
(``inputs`` its input-feature axis, with the positions of a flatten on the way), or None
where that input comes from the images through parameter-free operations only. Per-unit
leaves met after the sow point (a BatchNorm between the layer and its readers) are the
units' own parameters too: they join ``incoming`` so that a transplant moves them.

What cannot be told apart is refused with a :class:`DissectError` that names the operation:
an add, multiply or concatenation with another image-dependent value (a skip or residual
connection), a reduction or broadcast over the unit axis (LayerNorm over channels, a gate),
a reshape that mixes the unit axis with others, a pool, slice or concatenation along it,
several kernels or none, a grouped convolution, a reader that is not a kernel and not
unit-preserving (attention), any primitive not listed here. Milder doubts become the
``Wiring``'s own refusals: readers that feed different layers (``outgoing_refused``), a
kernel that reads learned channels of no single sown layer (``transplant_refused``), an
operation between the layer and its readers that maps 0 to a nonzero value, so that zeroing
the readers' weights is not zeroing the unit (``fold_refused``).

Axes are written as declared wirings write them: counted from the end for kernels (``-1``
output features, ``-2`` input features of a convolution or a dense kernel) and from the
start for 1-D leaves (``0``). Only shapes are read, so the variables and the example may be
:class:`jax.ShapeDtypeStruct` s (``jax.eval_shape(model.init, ...)``).

Versions: only public jax is used (``jax.make_jaxpr``, ``jax.extend.core.Literal``, the
primitives' names and parameters). Jax 0.10 broadcasts size-1 axes inside binary operations
where older versions emit ``broadcast_in_dim``; both are read. A primitive this module does
not know (a new name in a later jax) is refused by name, never guessed.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import inspect
import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np

from dissectjax.errors import DissectError
from dissectjax.models import common
from dissectjax.models.layers import Literal
from dissectjax.models.wiring import Slice, Wiring

# collections that sow_layer honours when passed (edits of a layer), left out of the trace
_EDIT_COLLECTIONS = frozenset((*common.EDIT_COLLECTIONS, common.INTERMEDIATES))

# primitives whose body is inlined (the parameter holding it)
_CALLS = {
    "pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr",
}  # fmt: skip
_KERNELS = frozenset({"conv_general_dilated", "dot_general"})
_ELEMENTWISE = frozenset(
    "abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp conj convert_element_type copy "
    "copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite le "
    "lgamma log log1p logistic lt max min mul ne neg nextafter not or pow real reduce_precision rem round rsqrt "
    "select_n sign sin sinh sqrt square sub tan tanh xor".split()
)
# unary operations with f(0) = 0 (a zeroed unit stays zero up to its readers)
_KEEP_ZERO = frozenset(
    "abs asin asinh atan atanh cbrt ceil conj convert_element_type copy copy_p erf erf_inv expm1 floor imag "
    "log1p neg real reduce_precision round sign sin sinh sqrt square tan tanh".split()
)
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or"})
_POOLS = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min"})
_CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})
_STRUCTURAL = frozenset({"broadcast_in_dim", "reshape", "squeeze", "transpose", "pad", "slice", "rev"})
_STRUCTURAL |= _REDUCTIONS | _POOLS | _CUMULATIVE
_JOINS = frozenset({"concatenate", "stack"})  # pieces of the units' value joined along another axis

_ADVICE = (
    "declare where its units live instead: give {model} a unit_wiring(layer) method returning a "
    "dissectjax.models.wiring.Wiring (as dissectjax/models/scenenet.py does); edits applied where the layer is "
    "sown (dissectjax.edit.with_edits) need no wiring"
)


# --- the traced program, flattened ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Eqn:
    """One primitive application: operand and result nodes, parameters, module scope."""

    prim: str
    params: Mapping
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    scope: str


@dataclasses.dataclass(frozen=True)
class _Graph:
    """The model's program with calls inlined; values are integer nodes.

    leaves: node -> (collection, path) of a variable leaf; images: the model's input nodes;
    literals: node -> value of a scalar literal; sown: node -> names sown with that value;
    outputs: the model's own outputs (not the intermediates); image/params: per node,
    whether it depends on the images / on variables; learned: computed from the images
    through some kernel with variable weights.
    """

    eqns: tuple[_Eqn, ...]
    shapes: tuple[tuple[int, ...], ...]
    leaves: Mapping[int, tuple[str, tuple]]
    images: frozenset[int]
    literals: Mapping[int, object]
    sown: Mapping[int, tuple[str, ...]]
    layers: Mapping[str, int]
    outputs: frozenset[int]
    producer: Mapping[int, int]
    consumers: Mapping[int, tuple[int, ...]]
    image: tuple[bool, ...]
    params: tuple[bool, ...]
    learned: tuple[bool, ...]


def _shape(v) -> tuple[int, ...]:
    """A jaxpr variable's shape (() for tokens and other shapeless values)."""
    return tuple(getattr(v.aval, "shape", ()))


def _key(k) -> str | int:
    """A pytree path entry as the name or index it stands for."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def _inner(eqn) -> tuple[object, list] | None:
    """(jaxpr, consts) of a call primitive whose body can be inlined, else None."""
    param = _CALLS.get(eqn.primitive.name)
    body = eqn.params.get(param) if param else None
    if body is None:
        return None
    jaxpr, consts = (body.jaxpr, list(body.consts)) if hasattr(body, "consts") else (body, [])
    if len(jaxpr.invars) != len(eqn.invars) or len(jaxpr.outvars) != len(eqn.outvars):
        return None
    return jaxpr, consts


def _scope(eqn) -> str:
    """The module path an operation was traced in (``Model/Conv_0``), where jax records it."""
    try:
        return str(eqn.source_info.name_stack)
    except Exception:  # pragma: no cover - private detail of jax's source info
        return ""


def _flatten(closed) -> tuple[list[_Eqn], list[tuple[int, ...]], dict, list[int], list[int]]:
    """(equations, node shapes, literals, input nodes, output nodes) of a closed jaxpr, calls inlined."""
    eqns: list[_Eqn] = []
    shapes: list[tuple[int, ...]] = []
    literals: dict[int, object] = {}

    def new(shape) -> int:
        shapes.append(tuple(shape))
        return len(shapes) - 1

    def read(env, v) -> int:
        if isinstance(v, Literal):
            node = new(np.shape(v.val))
            literals[node] = v.val
            return node
        return env[v]

    def inline(jaxpr, const_nodes, in_nodes):
        env = dict(zip(jaxpr.constvars, const_nodes))
        env.update(zip(jaxpr.invars, in_nodes))
        for e in jaxpr.eqns:
            ins = [read(env, v) for v in e.invars]
            body = _inner(e)
            if body is not None:
                sub, consts = body
                outs = inline(sub, [new(np.shape(c)) for c in consts], ins)
            else:
                outs = [new(_shape(v)) for v in e.outvars]
                eqns.append(_Eqn(e.primitive.name, dict(e.params), tuple(ins), tuple(outs), _scope(e)))
            env.update(zip(e.outvars, outs))
        return [read(env, v) for v in jaxpr.outvars]

    consts = [new(np.shape(c)) for c in closed.consts]
    inputs = [new(_shape(v)) for v in closed.jaxpr.invars]
    outputs = inline(closed.jaxpr, consts, inputs)
    return eqns, shapes, literals, inputs, outputs


def _trace(model: nn.Module, variables: Mapping, example) -> _Graph:
    """The flattened program of ``model.apply(variables, example, mutable=["intermediates"])``."""
    variables = {k: v for k, v in variables.items() if k not in _EDIT_COLLECTIONS}
    kwargs = {}
    try:
        if "train" in inspect.signature(type(model).__call__).parameters:
            kwargs["train"] = False
    except (TypeError, ValueError):  # pragma: no cover - a signature inspect cannot read
        pass

    def run(v, x):
        return model.apply(v, x, mutable=[common.INTERMEDIATES], **kwargs)

    closed, out_shape = jax.make_jaxpr(run, return_shape=True)(variables, example)
    leaf_paths = [tuple(_key(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
    eqns, shapes, literals, inputs, outputs = _flatten(closed)
    leaves = {node: (str(p[0]), p[1:]) for node, p in zip(inputs, leaf_paths)}
    images = frozenset(inputs[len(leaf_paths) :])
    sown: dict[int, tuple[str, ...]] = {}
    layers: dict[str, int] = {}
    model_outputs = set()
    for (path, _), node in zip(jax.tree_util.tree_flatten_with_path(out_shape)[0], outputs):
        keys = [_key(k) for k in path]
        if keys[:2] != [1, common.INTERMEDIATES]:
            model_outputs.add(node)
            continue
        names = keys[2:]
        if names and isinstance(names[-1], int):  # a tuple of sown values (linen's default sow): the first
            if names[-1] != 0:
                continue
            names = names[:-1]
        if names and names[-1] == "__call__":
            names = names[:-1]
        name = "/".join(map(str, names))
        layers.setdefault(name, node)
        sown[node] = (*sown.get(node, ()), name)
    producer, consumers = {}, {}
    for i, e in enumerate(eqns):
        for o in e.outs:
            producer[o] = i
        for n in set(e.ins):
            consumers.setdefault(n, []).append(i)
    image = [n in images for n in range(len(shapes))]
    params = [n in leaves for n in range(len(shapes))]
    learned = [False] * len(shapes)
    for e in eqns:
        img = any(image[n] for n in e.ins)
        par = any(params[n] for n in e.ins)
        kernel = e.prim in _KERNELS and img and any(params[n] and not image[n] for n in e.ins)
        lrn = kernel or any(learned[n] for n in e.ins)
        for o in e.outs:
            image[o], params[o], learned[o] = img, par, lrn
    return _Graph(
        eqns=tuple(eqns),
        shapes=tuple(shapes),
        leaves=leaves,
        images=images,
        literals=literals,
        sown=sown,
        layers=layers,
        outputs=frozenset(model_outputs),
        producer=producer,
        consumers={k: tuple(v) for k, v in consumers.items()},
        image=tuple(image),
        params=tuple(params),
        learned=tuple(learned),
    )


# --- how one operation moves the unit axis ---------------------------------------------------------


def _describe(g: _Graph, i: int) -> str:
    """``prim`` [shapes] -> [shape] in Scope/Module, for messages."""
    e = g.eqns[i]
    shapes = ", ".join(str(list(g.shapes[n])) for n in e.ins)
    out = ", ".join(str(list(g.shapes[n])) for n in e.outs)
    where = f" in {e.scope}" if e.scope else ""
    return f"`{e.prim}` {shapes} -> {out}{where}"


def _reshape_axis(src: tuple[int, ...], dst: tuple[int, ...], a: int) -> tuple[int, int] | str:
    """Where axis ``a`` of ``src`` lies after a reshape to ``dst``, and the positions it gains.

    Kept whole: an axis of the same size with the same number of entries before it. Or the
    trailing flatten [B, h, w, U] -> [B, h*w*U]: the axis gains h*w positions (unit fastest).
    """
    before = math.prod(src[:a])
    for b, size in enumerate(dst):
        if size == src[a] and math.prod(dst[:b]) == before:
            return b, 1
    if a == len(src) - 1 and len(src) > 2 and len(dst) == 2 and dst[0] == src[0]:
        return 1, math.prod(src[1:a])
    return (f"a reshape {list(src)} -> {list(dst)} mixes the unit axis with other axes (only keeping it whole or "
            "flattening [B, h, w, U] into [B, h*w*U] is followed)")  # fmt: skip


def _forward_axis(g: _Graph, i: int, a: int) -> tuple[int, int] | str:
    """(axis of the result, positions gained) for a structural operation reading the unit axis
    ``a`` of its first operand, or why the units do not come through it whole."""
    e = g.eqns[i]
    src, dst = g.shapes[e.ins[0]], g.shapes[e.outs[0]]
    p = e.params
    if e.prim == "broadcast_in_dim":
        b = p["broadcast_dimensions"][a]
        return (b, 1) if dst[b] == src[a] else "a broadcast along the unit axis"
    if e.prim == "reshape":
        if p.get("dimensions") is not None:
            return "a reshape that transposes its operand"
        return _reshape_axis(src, dst, a)
    if e.prim == "squeeze":
        dims = [d % len(src) for d in p["dimensions"]]
        return "a squeeze of the unit axis" if a in dims else (a - sum(d < a for d in dims), 1)
    if e.prim == "transpose":
        return tuple(p["permutation"]).index(a), 1
    if e.prim in _REDUCTIONS:
        axes = tuple(p["axes"])
        if a in axes:
            return (f"a reduction over the unit axis ({e.prim} over axes {axes}): units are combined, as in a "
                    "normalization over channels (LayerNorm) or a pooling across units")  # fmt: skip
        return a - sum(x < a for x in axes), 1
    if e.prim in _POOLS:
        window = (p["window_dimensions"][a], p["window_strides"][a], tuple(p["padding"][a]))
        dilations = (p.get("base_dilation") or (1,) * len(src))[a], (p.get("window_dilation") or (1,) * len(src))[a]
        return (a, 1) if window == (1, 1, (0, 0)) and dilations == (1, 1) else f"a pool ({e.prim}) across units"
    if e.prim in _CUMULATIVE:
        return f"a {e.prim} along the unit axis" if p["axis"] % len(src) == a else (a, 1)
    if e.prim == "pad":
        return (a, 1) if tuple(p["padding_config"][a]) == (0, 0, 0) else "a pad of the unit axis"
    if e.prim == "slice":
        strides = p.get("strides") or (1,) * len(src)
        whole = p["start_indices"][a] == 0 and p["limit_indices"][a] == src[a] and strides[a] == 1
        return (a, 1) if whole else "a slice of the unit axis"
    if e.prim == "rev":
        return "a reversal of the unit axis" if a in p["dimensions"] else (a, 1)
    return f"{e.prim}, which is not followed"  # pragma: no cover - callers check _STRUCTURAL first


def _backward_axis(g: _Graph, i: int, b: int) -> tuple[int, int] | str:
    """The unit axis of a structural operation's first operand whose result has it at ``b``
    (and the positions gained on the way), or why no single axis maps there."""
    e = g.eqns[i]
    found, why = [], None
    for a in range(len(g.shapes[e.ins[0]])):
        r = _forward_axis(g, i, a)
        if isinstance(r, tuple) and r[0] == b:
            found.append((a, r[1]))
        elif isinstance(r, str) and why is None:
            why = r
    if len(found) == 1:
        return found[0]
    if (e.prim == "broadcast_in_dim" and _creates_axis(g, i, b)) or not found:
        return why or f"a {e.prim} that creates the unit axis"
    return f"a {e.prim} after which the unit axis cannot be told apart"


def _creates_axis(g: _Graph, i: int, b: int) -> bool:
    """Whether a ``broadcast_in_dim`` creates its result's axis ``b`` (new, or from size 1)."""
    dims = tuple(g.eqns[i].params["broadcast_dimensions"])
    src, dst = g.shapes[g.eqns[i].ins[0]], g.shapes[g.eqns[i].outs[0]]
    return b not in dims or src[dims.index(b)] != dst[b]


def _join_axis(e: _Eqn, a: int, forward: bool) -> int | str:
    """Where the unit axis ``a`` goes through a concatenate / stack (of an operand, ``forward``;
    back to the operands otherwise), or why the units are joined with others."""
    if e.prim == "concatenate":
        return (
            "a concatenation along the unit axis (units joined with other channels)"
            if e.params["dimension"] == a
            else a
        )
    new = e.params["axis"]
    if forward:
        return a if a < new else a + 1
    return "a stack along the unit axis" if a == new else a if a < new else a - 1


def _varying(g: _Graph, node: int, memo: dict[int, frozenset[int]]) -> frozenset[int]:
    """Axes along which a value computed from variables and constants may vary (size > 1)."""
    if node in memo:
        return memo[node]
    shape = g.shapes[node]
    every = frozenset(d for d, s in enumerate(shape) if s > 1)
    i = g.producer.get(node)
    if i is None:
        out = frozenset() if node in g.literals else every
    else:
        e = g.eqns[i]
        ops = [n for n in e.ins if g.shapes[n]]
        if e.prim in _ELEMENTWISE:
            out = frozenset().union(*(_varying(g, n, memo) for n in ops)) & every
        elif e.prim == "broadcast_in_dim":
            dims = e.params["broadcast_dimensions"]
            out = frozenset(dims[d] for d in _varying(g, e.ins[0], memo)) & every
        elif e.prim == "transpose":
            perm = tuple(e.params["permutation"])
            out = frozenset(perm.index(d) for d in _varying(g, e.ins[0], memo))
        elif e.prim in _REDUCTIONS:
            axes = tuple(e.params["axes"])
            out = frozenset(d - sum(x < d for x in axes) for d in _varying(g, e.ins[0], memo) if d not in axes)
        elif e.prim in _STRUCTURAL:
            mapped = [_forward_axis(g, i, d) for d in _varying(g, e.ins[0], memo)]
            out = every if any(isinstance(m, str) or m[1] != 1 for m in mapped) else frozenset(m[0] for m in mapped)
        else:
            out = every
    memo[node] = out
    return out


def _unit_leaves(g: _Graph, node: int, axis: int) -> tuple[tuple[int, int], ...] | str:
    """The variable leaves (node, axis) whose ``axis`` becomes ``axis`` of a value computed from
    variables only: its per-unit parameters (leaves that are the same for every unit are left
    out), or why that cannot be told."""
    if node in g.leaves:
        return ((node, axis),)
    i = g.producer.get(node)
    if i is None:
        return ()
    e = g.eqns[i]
    size = g.shapes[node][axis]
    if e.prim in _ELEMENTWISE:
        found: list[tuple[int, int]] = []
        for n in e.ins:
            if g.shapes[n] and g.shapes[n][axis] == size:
                r = _unit_leaves(g, n, axis)
                if isinstance(r, str):
                    return r
                found += [x for x in r if x not in found]
        return tuple(found)
    if e.prim in _STRUCTURAL:
        if e.prim == "broadcast_in_dim":
            dims = e.params["broadcast_dimensions"]
            if axis not in dims or g.shapes[e.ins[0]][dims.index(axis)] != size:
                return ()  # the same for every unit
        r = _backward_axis(g, i, axis)
        if isinstance(r, str) or r[1] != 1:
            return f"{r if isinstance(r, str) else 'a flatten'} at {_describe(g, i)}"
        return _unit_leaves(g, e.ins[0], r[0])
    return f"parameters computed by {_describe(g, i)}, whose units cannot be told apart"


# --- kernels -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Kernel:
    """A convolution or dense product of an image-dependent value with variable weights.

    pairs: (image axis, kernel axis) contracted together; out_axis: the kernel's output
    features; out_unit: where they lie in the result.
    """

    eqn: int
    image: int
    kernel: int
    pairs: tuple[tuple[int, int], ...]
    out_axis: int
    out_unit: int


def _kernel(g: _Graph, i: int) -> _Kernel | str:
    """The kernel view of a ``conv_general_dilated`` / ``dot_general``, or why it is not one."""
    e = g.eqns[i]
    image = [pos for pos, n in enumerate(e.ins) if g.image[n]]
    if len(image) != 1:
        return (f"{_describe(g, i)} multiplies two image-dependent values (attention or a bilinear product), not "
                "a value by weights")  # fmt: skip
    pos = image[0]
    k = e.ins[1 - pos]
    if not g.params[k]:
        return f"{_describe(g, i)} applies a fixed filter (no variables in it), which mixes units"
    if e.prim == "conv_general_dilated":
        if pos != 0:
            return f"{_describe(g, i)} uses an image-dependent value as its filter"
        if e.params.get("feature_group_count", 1) != 1 or e.params.get("batch_group_count", 1) != 1:
            return f"{_describe(g, i)} is a grouped (or depthwise) convolution"
        dn = e.params["dimension_numbers"]
        return _Kernel(i, e.ins[0], k, ((dn.lhs_spec[1], dn.rhs_spec[1]),), dn.rhs_spec[0], dn.out_spec[1])
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    if lb or rb:
        return f"{_describe(g, i)} has batch dimensions"
    ic, kc = (lc, rc) if pos == 0 else (rc, lc)
    free = [d for d in range(len(g.shapes[k])) if d not in kc]
    if len(free) != 1:
        return f"{_describe(g, i)} has {len(free)} output-feature axes in its kernel, not one"
    lhs_free = len(g.shapes[e.ins[0]]) - len(lc)
    out_unit = lhs_free if pos == 0 else 0
    return _Kernel(i, e.ins[pos], k, tuple(zip(ic, kc)), free[0], out_unit)


# --- walks ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Back:
    """What lies behind a value, through unit-preserving operations."""

    kernels: tuple[tuple[int, int, int], ...] = ()  # (eqn, unit axis of its result, positions)
    sown: tuple[tuple[str, int, int], ...] = ()  # (layer, its unit axis, positions on the way)
    images: bool = False  # reaches the model's input
    per_unit: tuple[tuple[int, int], ...] = ()  # (variable-only operand, its unit axis)
    merges: tuple[int, ...] = ()  # operations that join two image-dependent values
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class _Reader:
    """A kernel reading the units: the product, which axis of its image operand holds them,
    with how many positions, and whether a zeroed unit is still zero there."""

    kernel: _Kernel
    axis: int
    positions: int
    zero: bool
    not_zero: int | None  # the first operation on the way that maps 0 to a nonzero value


@dataclasses.dataclass(frozen=True)
class _Forward:
    """Where a value goes, through unit-preserving operations."""

    readers: tuple[_Reader, ...] = ()
    sown: tuple[str, ...] = ()
    outputs: bool = False
    per_unit: tuple[tuple[int, int], ...] = ()
    problem: str | None = None


def _shared_reason(g: _Graph, node: int) -> str:
    """Why an image-dependent value is the same for every unit: the reduction it comes from, if any."""
    seen, stack = set(), [node]
    while stack and len(seen) < 256:
        n = stack.pop()
        i = g.producer.get(n)
        if i is None or i in seen:
            continue
        seen.add(i)
        e = g.eqns[i]
        if e.prim in _REDUCTIONS:
            where = f" in {e.scope}" if e.scope else ""
            return (f"an image-dependent value shared by all units, computed by {e.prim} over axes "
                    f"{tuple(e.params['axes'])}{where}: a normalization over the unit axis (LayerNorm over channels, "
                    "GroupNorm) or a gate")  # fmt: skip
        stack += [m for m in e.ins if g.image[m]]
    return "an image-dependent value shared by all units (a gate, or a broadcast of one value across units)"


def _per_unit_operand(g: _Graph, n: int, a: int, positions: int, memo: dict) -> tuple[int, int] | str | None:
    """A variable-only operand's role next to units on axis ``a``: per-unit (node, axis), None
    (the same for every unit), or why it is neither."""
    varying = _varying(g, n, memo)
    if not varying:
        return None
    if varying != {a}:
        return (f"an operand computed from variables that varies along axes {sorted(varying)}, not only along the "
                "unit axis: it is not a per-unit parameter")  # fmt: skip
    if positions != 1:
        return "a parameter that varies along a flattened axis of positions and units"
    return n, a


def _walk_back(g: _Graph, start: int, axis: int, stop_at_sown: bool) -> _Back:
    """Follows the unit axis of ``start`` back to the kernels that write it (or, with
    ``stop_at_sown``, to the sown layers whose units it carries)."""
    state = {start: (axis, 1)}
    heap = [(-g.producer.get(start, -1), start)]
    kernels, sown, per_unit, merges = [], [], [], []
    images, memo = False, {}
    done = set()

    def track(n: int, st: tuple[int, int]) -> str | None:
        if state.setdefault(n, st) != st:
            return f"the unit axis reaches {g.shapes[n]} in two different places"
        heapq.heappush(heap, (-g.producer.get(n, -1), n))
        return None

    def result(problem=None) -> _Back:
        return _Back(tuple(kernels), tuple(sown), images, tuple(per_unit), tuple(merges), problem)

    while heap:
        _, n = heapq.heappop(heap)
        if n in done:
            continue
        done.add(n)
        a, f = state[n]
        if stop_at_sown and n in g.sown:
            sown += [(name, a, f) for name in g.sown[n]]
            continue
        i = g.producer.get(n)
        if i is None:
            images = True
            continue
        e = g.eqns[i]
        if e.prim in _KERNELS:
            k = _kernel(g, i)
            if isinstance(k, str):
                return result(k)
            kernels.append((i, a, f))
            continue
        if e.prim in _ELEMENTWISE:
            out = g.shapes[n]
            joined = {m for m in e.ins if g.image[m]}
            if len(joined) > 1:
                merges.append(i)
            for m in e.ins:
                if g.image[m]:
                    if not g.shapes[m] or g.shapes[m][a] != out[a]:
                        return result(f"{_describe(g, i)} combines the units with {_shared_reason(g, m)}")
                    why = track(m, (a, f))
                elif g.params[m] and g.shapes[m]:
                    r = _per_unit_operand(g, m, a, f, memo)
                    why = r if isinstance(r, str) else None
                    if isinstance(r, tuple):
                        per_unit.append(r)
                else:
                    why = None
                if why:
                    return result(f"{why} at {_describe(g, i)}")
            continue
        if e.prim in _JOINS:
            r = _join_axis(e, a, forward=False)
            if isinstance(r, str) or not all(g.image[m] for m in e.ins):
                reason = r if isinstance(r, str) else "a join of the units with values computed without the images"
                return result(f"{reason} at {_describe(g, i)}")
            if len(set(e.ins)) > 1:
                merges.append(i)
            why = next((w for w in (track(m, (r, f)) for m in e.ins) if w), None)
            if why:
                return result(f"{why} at {_describe(g, i)}")
            continue
        if e.prim in _STRUCTURAL and g.image[e.ins[0]] and not any(g.image[m] for m in e.ins[1:]):
            r = _backward_axis(g, i, a)
            if isinstance(r, str):
                shared = e.prim == "broadcast_in_dim" and _creates_axis(g, i, a)
                reason = f"it combines the units with {_shared_reason(g, e.ins[0])}" if shared else r
                return result(f"{reason} at {_describe(g, i)}")
            why = track(e.ins[0], (r[0], f * r[1]))
            if why:
                return result(f"{why} at {_describe(g, i)}")
            continue
        return result(f"{_describe(g, i)} is neither a unit-preserving operation nor a kernel with variable weights")
    return result()


def _scalar(g: _Graph, n: int) -> float | None:
    """The value of a scalar constant (a literal, possibly converted), else None."""
    if n in g.literals:
        v = g.literals[n]
        return None if np.ndim(v) else float(np.asarray(v))
    i = g.producer.get(n)
    if i is None or g.eqns[i].prim not in ("convert_element_type", "copy", "copy_p", "reduce_precision"):
        return None
    return _scalar(g, g.eqns[i].ins[0])


def _keeps_zero(g: _Graph, i: int, zero: Mapping[int, bool]) -> bool:
    """Whether an elementwise operation maps zero units (``zero``: tracked operands that are
    zero where the unit is) to zero."""
    e = g.eqns[i]
    tracked = [zero[n] for n in e.ins if n in zero]
    others = [n for n in e.ins if n not in zero]

    literal = functools.partial(_scalar, g)
    if e.prim in _KEEP_ZERO:
        return all(tracked)
    if e.prim == "integer_pow":
        return all(tracked) and e.params["y"] > 0
    if e.prim == "mul":
        return any(tracked)
    if e.prim == "div":
        return e.ins[0] in zero and zero[e.ins[0]]
    if e.prim in ("add", "sub", "add_any"):
        return all(tracked) and all(literal(n) == 0 for n in others)
    if e.prim in ("max", "min"):
        ok = (lambda v: v is not None and v <= 0) if e.prim == "max" else (lambda v: v is not None and v >= 0)
        return all(tracked) and all(ok(literal(n)) for n in others)
    if e.prim == "select_n":  # where(x > 0, x, a * x): every case is zero where the unit is
        return all(zero.get(n, False) or literal(n) == 0 for n in e.ins[1:])
    if e.prim == "clamp":  # clamp(lo, x, hi) with lo <= 0 <= hi
        lo, hi = literal(e.ins[0]), literal(e.ins[2])
        return zero.get(e.ins[1], False) and lo is not None and hi is not None and lo <= 0 <= hi
    return False


def _walk_forward(g: _Graph, start: int, axis: int, stop_at_sown: bool) -> _Forward:
    """Follows the unit axis of ``start`` forward to the kernels that read it (and, with
    ``stop_at_sown``, to the sown layers it reaches first)."""
    state: dict[int, tuple[int, int]] = {start: (axis, 1)}
    zero: dict[int, bool] = {start: True}
    not_zero: dict[int, int | None] = {start: None}
    heap = list(g.consumers.get(start, ()))
    heapq.heapify(heap)
    readers, sown, per_unit, memo, done = [], [], [], {}, set()
    outputs = start in g.outputs

    def result(problem=None) -> _Forward:
        return _Forward(tuple(readers), tuple(sown), outputs, tuple(per_unit), problem)

    while heap:
        i = heapq.heappop(heap)
        if i in done:
            continue
        done.add(i)
        e = g.eqns[i]
        tracked = [n for n in e.ins if n in state]
        (a, p), z = state[tracked[0]], zero[tracked[0]]
        first_nonzero = next((not_zero[n] for n in tracked if not_zero[n] is not None), None)
        if e.prim in _KERNELS:
            k = _kernel(g, i)
            if isinstance(k, str):
                return result(k)
            if k.image not in state:
                return result(f"{_describe(g, i)} uses the units in its weights")
            a, p = state[k.image]
            if a not in [x for x, _ in k.pairs]:
                return result(f"{_describe(g, i)} reads the units along an axis it does not contract (not as features)")
            readers.append(_Reader(k, a, p, zero[k.image], not_zero[k.image]))
            continue
        if e.prim in _ELEMENTWISE:
            out = g.shapes[e.outs[0]]
            for m in e.ins:
                if g.image[m] and m not in state:
                    return result(f"{_describe(g, i)} combines the units with another image-dependent value: a skip or "
                                  "residual connection")  # fmt: skip
                if m in state and (state[m] != (a, p) or g.shapes[m][a] != out[a]):
                    return result(f"{_describe(g, i)} combines the units with a differently laid out copy of them")
                if not g.image[m] and g.params[m] and g.shapes[m]:
                    r = _per_unit_operand(g, m, a, p, memo)
                    if isinstance(r, str):
                        return result(f"{r} at {_describe(g, i)}")
                    if r is not None:
                        per_unit.append(r)
            z = _keeps_zero(g, i, {n: zero[n] for n in tracked})
            st = (a, p)
        elif e.prim in _STRUCTURAL and e.ins[0] in state and len(tracked) == 1:
            r = _forward_axis(g, i, a)
            if isinstance(r, str):
                return result(f"{r} at {_describe(g, i)}")
            st = (r[0], p * r[1])
            if e.prim == "pad":
                z = z and _scalar(g, e.ins[1]) == 0
        elif e.prim in _JOINS:
            r = _join_axis(e, a, forward=True)
            if isinstance(r, str):
                return result(f"{r} at {_describe(g, i)}")
            if any(m not in state for m in e.ins):
                return result(f"{_describe(g, i)} joins the units with another value: a skip connection or a branch")
            if any(state[m] != (a, p) for m in e.ins):
                return result(f"{_describe(g, i)} joins differently laid out copies of the units")
            st, z = (r, p), all(zero[m] for m in e.ins)
        else:
            return result(f"{_describe(g, i)} reads the units but is neither a unit-preserving operation nor a "
                          "kernel with variable weights")  # fmt: skip
        o = e.outs[0]
        outputs = outputs or o in g.outputs
        if stop_at_sown and o in g.sown:
            sown += [name for name in g.sown[o] if name not in sown]
            continue
        state[o], zero[o] = st, z
        not_zero[o] = None if z else (first_nonzero if first_nonzero is not None else i)
        for c in g.consumers.get(o, ()):
            heapq.heappush(heap, c)
    return result()


# --- the wiring --------------------------------------------------------------------------------


def _slice(g: _Graph, leaf: int, axis: int, positions: int = 1) -> Slice:
    """A leaf's axis as a Slice: from the end for kernels, from the start for 1-D leaves."""
    ndim = len(g.shapes[leaf])
    axis %= max(ndim, 1)
    collection, path = g.leaves[leaf]
    return Slice(collection, path, axis if ndim == 1 else axis - ndim, positions)


def _leaf_slices(g: _Graph, node: int, axis: int, positions: int = 1) -> tuple[Slice, ...] | str:
    """The Slices of the variable leaves behind ``node``'s ``axis``."""
    r = _unit_leaves(g, node, axis)
    return r if isinstance(r, str) else tuple(_slice(g, leaf, ax, positions) for leaf, ax in r)


def _dedupe(slices) -> tuple[Slice, ...]:
    out: list[Slice] = []
    for s in slices:
        if s not in out:
            out.append(s)
    return tuple(out)


def _next_layer(g: _Graph, k: _Kernel) -> tuple[str | None, str | None]:
    """(the sown layer whose units a reader's outputs are, or None for the model's output; why
    neither, if so)."""
    out = g.eqns[k.eqn].outs[0]
    if out in g.sown:
        return g.sown[out][0], None
    f = _walk_forward(g, out, k.out_unit, stop_at_sown=True)
    what = f"the output of {_describe(g, k.eqn)}"
    if f.problem:
        return None, f"{what} reaches no sown layer through unit-preserving operations ({f.problem})"
    if f.readers:
        return None, f"{what} is read by {_describe(g, f.readers[0].kernel.eqn)} before any sown layer"
    if len(f.sown) == 1 and not f.outputs:
        return f.sown[0], None
    if f.outputs and not f.sown:
        return None, None
    return None, f"{what} reaches {', '.join(f.sown) or 'nothing'}{' and the model output' if f.outputs else ''}"


def _previous(g: _Graph, k: _Kernel) -> tuple[str | None, Slice | None, str | None]:
    """(previous layer, the incoming kernel's input-feature slice, why units cannot be
    transplanted) from what the incoming kernel reads."""
    if not g.learned[k.image]:
        return None, None, None  # computed from the images without learned weights: a first layer
    refused = (f"its kernel ({_describe(g, k.eqn)}) reads learned channels that are not the units of one sown layer "
               "({why}), so the filters of two instances cannot be aligned by a matching")  # fmt: skip
    if len(k.pairs) != 1:
        return None, None, refused.format(why="it contracts several axes")
    image_axis, kernel_axis = k.pairs[0]
    back = _walk_back(g, k.image, image_axis, stop_at_sown=True)
    if back.problem or back.kernels or back.images or len({s[0] for s in back.sown}) != 1:
        return None, None, refused.format(why=back.problem or "no single sown layer lies behind them")
    name, axis, positions = back.sown[0]
    if axis != len(g.shapes[g.layers[name]]) - 1:
        return None, None, refused.format(why=f"they are not {name}'s unit axis")
    slices = _leaf_slices(g, k.kernel, kernel_axis, positions)
    if isinstance(slices, str) or len(slices) != 1:
        return None, None, refused.format(why=slices if isinstance(slices, str) else "several kernel leaves")
    return name, slices[0], None


class _Untraceable(Exception):
    """Where a wiring cannot be inferred, and why; :func:`traced_wiring` words it for the user."""


def _known(r):
    """``r``, unless it is a reason (a string) why it could not be found."""
    if isinstance(r, str):
        raise _Untraceable(r)
    return r


def _incoming(g: _Graph, node: int) -> tuple[_Kernel, tuple[Slice, ...]]:
    """(the one kernel that writes the units of sown ``node``, their own parameters on the way)."""
    back = _walk_back(g, node, len(g.shapes[node]) - 1, stop_at_sown=False)
    if back.problem:
        raise _Untraceable(back.problem)
    sources = sorted({i for i, _, _ in back.kernels})
    if len(sources) != 1 or back.images:
        found = "; ".join([_describe(g, i) for i in sources] + ["the model input"] * back.images) or "none"
        if back.merges:
            raise _Untraceable(f"{_describe(g, back.merges[0])} joins values from several sources ({found}): a skip "
                               "or residual connection, or several kernels writing the same units")  # fmt: skip
        raise _Untraceable(f"{len(sources)} kernels with variable weights write its units ({found})")
    i, out_axis, positions = back.kernels[0]
    k = _known(_kernel(g, i))
    if positions != 1:
        raise _Untraceable(f"its units are the positions and channels of a map flattened after {_describe(g, i)}")
    if out_axis != k.out_unit:
        raise _Untraceable(f"its units are not the output features of {_describe(g, i)}")
    own = _known(_leaf_slices(g, k.kernel, k.out_axis))
    if not own:
        raise _Untraceable(f"no variable leaf holds the filters of {_describe(g, i)}")
    return k, (*own, *(s for n, a in back.per_unit for s in _known(_leaf_slices(g, n, a))))


def _readers(g: _Graph, node: int) -> _Forward:
    """The kernels that read the units of sown ``node`` (and the per-unit operands on the way)."""
    fwd = _walk_forward(g, node, len(g.shapes[node]) - 1, stop_at_sown=False)
    if fwd.problem:
        raise _Untraceable(fwd.problem)
    if fwd.outputs:
        raise _Untraceable("its units reach the model's output directly, not only through weights that read them")
    if not fwd.readers:
        raise _Untraceable("no kernel with variable weights reads its units")
    return fwd


def _reader_slices(g: _Graph, r: _Reader) -> tuple[tuple[Slice, ...], tuple[Slice, ...]]:
    """(a reader's input-feature slices for the units, the same leaves' output-feature slices)."""
    k = r.kernel
    ins = _known(_leaf_slices(g, k.kernel, dict(k.pairs)[r.axis], r.positions))
    outs = _known(_leaf_slices(g, k.kernel, k.out_axis))
    if not ins:
        raise _Untraceable(f"no variable leaf holds the weights of {_describe(g, k.eqn)}")
    paths = {(s.collection, s.path) for s in ins}
    return ins, tuple(s for s in outs if (s.collection, s.path) in paths)


def _outgoing(g: _Graph, layer: str, fwd: _Forward) -> dict:
    """Wiring fields ``outgoing``, ``outgoing_outputs``, ``next``, ``outgoing_refused`` from the readers."""
    slices = [_reader_slices(g, r) for r in fwd.readers]
    nexts = [_next_layer(g, r.kernel) for r in fwd.readers]
    names = {n for n, _ in nexts}
    why = next((w for _, w in nexts if w), None)
    refused = None
    if why:
        refused = f"the weights that read {layer} do not feed one sown layer: {why}"
    elif len(names) > 1:
        feeds = ", ".join(sorted(n or "the model output" for n in names))
        refused = f"the readers of {layer} feed different layers ({feeds}): their outputs have no one order"
    nxt = next(iter(names)) if len(names) == 1 and not refused else None
    return {
        "outgoing": _dedupe(s for ins, _ in slices for s in ins),
        "outgoing_outputs": _dedupe(s for _, outs in slices for s in outs) if nxt is not None else None,
        "next": nxt,
        "outgoing_refused": refused,
    }


def _fold_refused(g: _Graph, fwd: _Forward) -> str | None:
    """Why zeroing the readers' weights is not zeroing the units, if an operation on the way
    maps zero to a nonzero value (a bias or a sigmoid after the sow point)."""
    changed = next((r for r in fwd.readers if not r.zero), None)
    if changed is None:
        return None
    op = _describe(g, changed.not_zero) if changed.not_zero is not None else "an operation"
    return (f"{op} maps a zeroed unit to a nonzero value before {_describe(g, changed.kernel.eqn)} reads it, so "
            "zeroing the weights that read it is not zeroing the unit")  # fmt: skip


def _wiring(g: _Graph, layer: str) -> Wiring:
    """The wiring of sown ``layer`` in the traced program ``g`` (raises :class:`_Untraceable`)."""
    node = g.layers[layer]
    shape = g.shapes[node]
    if len(shape) < 2:
        raise _Untraceable(f"its value has shape {list(shape)}; expected [B, ..., units]")
    kernel, own = _incoming(g, node)
    previous, inputs, transplant_refused = _previous(g, kernel)
    fwd = _readers(g, node)
    after = tuple(s for n, a in fwd.per_unit for s in _known(_leaf_slices(g, n, a)))
    return Wiring(
        layer=layer,
        units=shape[-1],
        incoming=_dedupe((*own, *after)),
        inputs=inputs,
        previous=previous,
        transplant_refused=transplant_refused,
        fold_refused=_fold_refused(g, fwd),
        **_outgoing(g, layer, fwd),
    )


def traced_wiring(model: nn.Module, variables: Mapping, example: jax.Array, layer: str) -> Wiring:
    """The :class:`Wiring` of sown ``layer`` (``sub/name`` inside a submodule), inferred by
    tracing ``model`` on a batch like ``example`` with ``variables`` (arrays, or
    :class:`jax.ShapeDtypeStruct` s: only shapes are read); a :class:`DissectError` naming the
    operation where it cannot be inferred (module docstring: what is followed, what refused)."""
    name = type(model).__name__
    g = _trace(model, variables, example)
    if layer not in g.layers:
        raise DissectError(f"{name} sows no layer {layer!r}; sown layers: {', '.join(g.layers) or 'none'}")
    try:
        return _wiring(g, layer)
    except _Untraceable as e:
        raise DissectError(
            f"cannot trace where the units of {name}'s layer {layer!r} live: {e}; {_ADVICE.format(model=name)}"
        ) from None
