"""Every architecture family for the surgery tests: small instances, their runners, and hand-planted weights.

One table (:data:`FAMILIES`): a family's model, input shape, the layers the surgery tests
cover and the layer a class is planted in. :func:`build` makes two random instances of a
family (NumPy draws into the shapes ``init`` would make: no compiled random number
generation, which costs seconds per shape on a small CPU) and the jitted functions every
test runs them through, one per model.

The planted networks (:func:`plant`) carry one class, ``PLANTED_CLASS``, through one unit
of the planted layer: a hand-set lane of units, one per layer, that starts as a detector
of a white square (pixels above 0.8 of full scale in every channel, which the other
images never reach), relays it unit to unit (centre taps of weight 1, identity
normalization) and is read by the classifier for that class alone, with a large weight
and a bias that keeps the class out of reach while the lane is off. Every weight into the
lane from other units, and out of it to other units, is zero, so the rest of the random
network computes the other classes from the images untouched. Everything runs through
the models' own code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dissectjax.edit import UnitEdit, with_edits
from dissectjax.models import AlexNet, LeNet5, ResNet18, ResNet50, SceneNet, VGG16Net, nnx_bridge
from dissectjax.models.common import LAYER_VALUES, UNIT_EDITS, nested
from dissectjax.models.layers import LayerForward, compiled, sown_layer_names
from dissectjax.models.nnx_convnet import ConvNet
from dissectjax.models.ops import IMAGENET_MEAN, IMAGENET_STD

CLASSES = 3
PLANTED_CLASS = 2
BATCH = 16  # images per forward pass in the surgery tests
MATCH_BATCH = 64  # images the matchings correlate over; also the planted layer_data batch (one compiled shape)
EPS = 1e-5  # BatchNorm epsilon of every model here

# VGG-16's 13 convolutions and 5 pools with an eighth of the widths (64 .. 512 -> 8 .. 64): the full widths cost
# 0.3 GFLOP an image at 32 x 32, seconds per batch on a small CPU
NARROW_VGG16 = tuple(
    item
    for stage, (features, convs) in enumerate(((8, 2), (16, 2), (32, 3), (64, 3), (64, 3)), start=1)
    for item in (*((f"conv{stage}_{i}", features, 3, 1, 1) for i in range(1, convs + 1)), "pool")
)


@dataclasses.dataclass(frozen=True)
class Family:
    id: str
    make: Callable[[], object]
    shape: tuple[int, int, int]
    layers: tuple[str, ...]
    planted: str | None = None  # the layer a class is planted in (None: no planted case)
    is_nnx: bool = False


FAMILIES = (
    Family("scenenet", lambda: SceneNet(num_classes=CLASSES, widths=(4, 6, 8, 8, 10)), (32, 32, 3),
           ("conv1", "conv3", "conv5"), "conv3"),
    Family("lenet5", lambda: LeNet5(num_classes=CLASSES), (32, 32, 1), ("conv2", "fc1"), "conv2"),
    Family("alexnet", lambda: AlexNet(hidden=32, num_classes=CLASSES), (64, 64, 3), ("conv5", "fc6"), "conv3"),
    Family("vgg16", lambda: VGG16Net(layers=NARROW_VGG16, hidden=32, num_classes=CLASSES), (32, 32, 3),
           ("conv2_1", "conv5_3")),
    Family("resnet18", lambda: ResNet18(width=8, num_classes=CLASSES), (32, 32, 3),
           ("conv1", "layer2_1/relu1", "layer2"), "layer2_1/relu1"),
    Family("resnet50", lambda: ResNet50(width=8, num_classes=CLASSES), (32, 32, 3),
           ("layer2_0/relu2", "layer3")),
    Family("nnx_convnet", lambda: ConvNet((4, 6, 8), num_classes=CLASSES, rngs=nnx.Rngs(0)), (32, 32, 3),
           ("conv2", "conv3"), "conv2", is_nnx=True),
)  # fmt: skip
BY_ID = {f.id: f for f in FAMILIES}
FAMILY_LAYERS = [(f.id, layer) for f in FAMILIES for layer in f.layers]
PLANTED = [f.id for f in FAMILIES if f.planted]


# ---- random instances ----------------------------------------------------------------------
def random_like(shapes, seed: int) -> dict:
    """NumPy variables in the shapes of ``shapes``: He-normal kernels and non-trivial biases and
    normalization (scale, bias, statistics), so that every array differs between two seeds."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            x = rng.normal(size=s.shape) * math.sqrt(2.0 / math.prod(s.shape[:-1]))
        elif name in ("scale", "var"):
            x = rng.uniform(0.5, 1.5, s.shape)
        else:  # bias, mean
            x = rng.normal(0.0, 0.2, s.shape)
        return x.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def as_numpy(tree) -> dict:
    """A mutable copy of a variables tree with NumPy leaves (plain dicts all the way down)."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: as_numpy(v) for k, v in tree.items()}
    return np.array(tree)


@dataclasses.dataclass
class Instance:
    """A family's model, two random instances ``a`` and ``b`` and images, with jitted runners."""

    family: Family
    model: object  # the linen module, or the (abstract) NNX module, whose unit_wiring surgery reads
    a: dict
    b: dict
    images: np.ndarray  # uint8 [BATCH, H, W, C]
    match_images: np.ndarray  # uint8 [MATCH_BATCH, H, W, C]
    split: nnx_bridge.Split | None = None
    _zeroed: dict = dataclasses.field(default_factory=dict)  # NNX: layer -> jitted logits with the layer zeroed
    _maps: Callable | None = None  # linen: the jitted activation function of every sown layer

    @functools.cached_property
    def _logits(self):
        if self.split is None:
            return fast_jit(self.model.apply)
        split = self.split
        return fast_jit(lambda v, x: nnx_bridge.call(split.merge(v), x))

    def logits(self, variables, images=None) -> np.ndarray:
        """float [N, K]: the network with ``variables`` on ``images`` (default: the test batch)."""
        images = self.images if images is None else images
        if self.split is None and UNIT_EDITS not in variables and LAYER_VALUES not in variables:
            variables = with_edits(variables, *self._no_edits)  # the program the edits run through
        n = len(images)
        padded = np.concatenate([images, np.zeros(((-n) % BATCH, *images.shape[1:]), images.dtype)])
        return np.concatenate([np.asarray(self._logits(variables, jnp.asarray(padded[i : i + BATCH])))
                               for i in range(0, len(padded), BATCH)])[:n]  # fmt: skip

    @functools.cached_property
    def _no_edits(self) -> list[UnitEdit]:
        return [UnitEdit.zero(layer, [], self.model.unit_wiring(layer).units) for layer in self.family.layers]

    def logits_with_edit(self, variables, edit: UnitEdit) -> np.ndarray:
        """The edit applied where its layer is sown, beside a no-op edit of every other tested layer: one
        variables structure, so one compiled program for the plain network and every edit of the family
        (:meth:`logits` runs the plain network with the no-op edits: ``edit_units`` keeps every unit
        whose mask is 0)."""
        return self.logits(with_edits(variables, *(edit if e.layer == edit.layer else e for e in self._no_edits)))

    @functools.cached_property
    def _sown(self) -> dict:
        """Linen: {layer: ShapeDtypeStruct} of every sown layer on the test batch."""
        x = jnp.asarray(self.images)
        shapes = jax.eval_shape(lambda v, x: self.model.apply(v, x, mutable=["intermediates"])[1], self.a, x)
        return shapes["intermediates"]

    def logits_with_layer_zeroed(self, variables, layer: str) -> np.ndarray:
        """The layer's output replaced by zeros (linen: the ``layer_values`` collection; NNX, which sows
        but has no such collection: the module's own submodules run with that layer's output zeroed)."""
        x = jnp.asarray(self.images)
        if self.split is None:
            node = self._sown
            for key in layer.split("/"):
                node = node[key]
            zeros = jnp.zeros(node.shape, node.dtype)
            return self.logits({**variables, LAYER_VALUES: nested({layer: zeros})})
        if layer not in self._zeroed:
            self._zeroed[layer] = _nnx_zeroed(self.split, layer)
        return np.asarray(self._zeroed[layer](variables, x))

    def activations(self, variables, layer: str) -> np.ndarray:
        """The layer's maps [N, h, w, U] on the matching images."""
        if self.split is None:
            if self._maps is None:  # layer_matching's compiled program of every sown layer (activation_fn's)
                names = sown_layer_names(self.model, variables, jnp.asarray(self.images[:1]))
                self._maps = compiled(LayerForward(self.model, names))
            return np.asarray(self._maps(variables, jnp.asarray(self.match_images))[layer])
        forward, state = nnx_bridge.activation_fn(self.split.merge(variables), [layer], self.family.shape)
        return np.asarray(_jitted(forward)(state, jnp.asarray(self.match_images))[layer])


@functools.cache
def _jitted(fn):
    return fast_jit(fn)


def fast_jit(fn):
    """``jax.jit(fn)``, compiled with little optimization on the CPU: the programs here run a few
    times on 16 small images, so compiling (seconds per ResNet on a small CPU) is what costs."""
    if jax.default_backend() != "cpu":
        return jax.jit(fn)
    return jax.jit(
        fn, compiler_options={"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    )


def _nnx_zeroed(split: nnx_bridge.Split, layer: str):
    def run(variables, images):
        module = split.merge(variables)
        h = images.astype(jnp.float32) / 255.0
        for i, conv in enumerate(module.conv(name) for name in module.layer_names):
            h = nnx.relu(conv(h))
            if f"conv{i + 1}" == layer:
                h = jnp.zeros_like(h)
        return module.classifier(h.mean(axis=(1, 2)))

    return fast_jit(run)


def varied_images(n: int, shape, rng) -> np.ndarray:
    """uint8 [n, H, W, C] that differ as wholes, not only pixel by pixel: a coarse 4 x 4 random pattern
    at a random contrast over a random colour, plus noise of a random strength (i.i.d. noise images all
    look alike to deep units, which then sit at one value, active or dead, on every image)."""
    h, w, c = shape
    coarse = np.repeat(np.repeat(rng.uniform(0, 1, (n, 4, 4, c)), h // 4, 1), w // 4, 2)
    contrast, colour = rng.uniform(0.2, 1.0, (n, 1, 1, 1)), rng.uniform(0, 1, (n, 1, 1, c))
    noise = rng.normal(0, 1, (n, h, w, c)) * rng.uniform(0, 0.3, (n, 1, 1, 1))
    return (np.clip(colour * (1 - contrast) + contrast * coarse + noise, 0, 1) * 255).astype(np.uint8)


@functools.cache
def build(family_id: str) -> Instance:
    """Two random instances of the family (seeds 1 and 2) and random images (seed 0)."""
    family = BY_ID[family_id]
    rng = np.random.default_rng(0)
    images, match_images = varied_images(BATCH, family.shape, rng), varied_images(MATCH_BATCH, family.shape, rng)
    if family.is_nnx:
        module = nnx.eval_shape(family.make)  # shapes only: parameters come from NumPy
        split = nnx_bridge.Split.of(module)
        shapes = split.variables
        a, b = (random_like(shapes, seed) for seed in (1, 2))
        return Instance(family, module, a, b, images, match_images, split)
    model = family.make()
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *family.shape), jnp.uint8))
    a, b = (as_numpy(random_like(dict(shapes), seed)) for seed in (1, 2))
    return Instance(family, model, a, b, images, match_images)


# ---- planted networks ----------------------------------------------------------------------
WHITE = 0.8  # the detector's threshold, as a fraction of full scale, in every channel
DIM = 160  # the other images' pixels are at most this (< 0.8 * 255)


def planted_images(shape, n_class: int, n_other: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [n_other + n_class, H, W, C], is_class [N] bool): noise of at most DIM; the last
    ``n_class`` images also hold a white square over the top-left 5/8 of the image."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, DIM + 1, (n_other + n_class, *shape), dtype=np.uint8)
    side = shape[0] * 5 // 8
    images[n_other:, :side, :side] = 255
    return images, np.arange(len(images)) >= n_other


def _centre(kernel: np.ndarray) -> tuple[int, int]:
    return kernel.shape[0] // 2, kernel.shape[1] // 2


def detector(kernel: np.ndarray, lane: int, weights) -> None:
    """Conv kernel [kh, kw, C, U]: unit ``lane`` reads only the centre pixel, with ``weights`` per channel."""
    kernel[..., lane] = 0.0
    kernel[(*_centre(kernel), slice(None), lane)] = weights


def relay(kernel: np.ndarray, src: int, dst: int, gain: float = 1.0, positions=None, read=None) -> None:
    """Unit ``dst`` reads only unit ``src`` of the layer below (conv: at the centre tap; dense: at the
    flattened ``positions`` x units entries of ``read`` positions, default all), and nothing else reads ``src``."""
    kernel[..., dst] = 0.0
    if kernel.ndim == 4:
        kernel[:, :, src, :] = 0.0
        kernel[(*_centre(kernel), src, dst)] = gain
        return
    units = kernel.shape[0] // (positions or 1)
    rows = src + units * np.arange(positions or 1)
    kernel[rows, :] = 0.0
    kernel[rows if read is None else rows[read], dst] = gain


def isolate(kernel: np.ndarray, src: int) -> None:
    """Nothing in this kernel reads channel ``src`` (its input axis)."""
    kernel[..., src, :] = 0.0


def reader(kernel: np.ndarray, bias: np.ndarray, src: int, weight: float, offset: float, positions: int = 1) -> None:
    """Classifier [P * U, K]: the planted class reads only unit ``src`` (at every position), which
    nothing else reads; its bias is ``offset``."""
    units = kernel.shape[0] // positions
    rows = src + units * np.arange(positions)
    kernel[rows, :] = 0.0
    kernel[:, PLANTED_CLASS] = 0.0
    kernel[rows, PLANTED_CLASS] = weight
    bias[PLANTED_CLASS] = offset


def norm(v: dict, module: tuple, unit: int, mean: float = 0.0, identity: bool = True) -> None:
    """BatchNorm at ``module``: unit ``unit`` passes ``x - mean`` (identity) or outputs 0 for a zero input."""
    p, s = _at(v["params"], module), _at(v["batch_stats"], module)
    p["bias"][unit] = 0.0
    s["mean"][unit] = mean
    if identity:
        p["scale"][unit] = 1.0
        s["var"][unit] = 1.0 - EPS


def _at(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


LANE = 2  # the lane's unit in every layer (the planted unit u)
WEIGHT, OFFSET = 1000.0, -100.0  # relu lanes: the class logit is WEIGHT * lane + OFFSET (OFFSET where it is off)


def imagenet_detector(kernel: np.ndarray, lane: int) -> float:
    """A white-square detector on ImageNet-normalized input: weights std_c, so the unit reads
    sum_c pixel_c - sum_c mean_c; returns the bias (or minus the BatchNorm mean) that makes it
    sum_c pixel_c - 3 * WHITE."""
    detector(kernel, lane, np.asarray(IMAGENET_STD, np.float32))
    return float(sum(IMAGENET_MEAN) - 3 * WHITE)


def plant_scenenet(v: dict) -> None:
    p = v["params"]
    # preprocess: (pixel - 0.5) / 0.25, so sum_c input_c = 4 * sum_c pixel_c - 6
    detector(p["block1_conv"]["kernel"], LANE, 1.0)
    norm(v, ("block1_bn",), LANE, mean=4 * 3 * WHITE - 6)
    for i in range(2, 6):
        relay(p[f"block{i}_conv"]["kernel"], LANE, LANE)
        norm(v, (f"block{i}_bn",), LANE)
    reader(p["classifier"]["kernel"], p["classifier"]["bias"], LANE, WEIGHT, OFFSET)


def plant_lenet5(v: dict) -> None:
    """tanh lanes are never exactly off, so each layer thresholds at 0.5 (tanh(5 (x - 0.5))): on stays
    near +1, off near -1, and an ablated 0 reads as off. F5 reads conv2's centre position, where the
    square is."""
    p = v["params"]
    detector(p["C1"]["kernel"], LANE, 20.0)
    p["C1"]["bias"][LANE] = -20.0 * WHITE
    relay(p["C3"]["kernel"], LANE, LANE, 5.0)
    relay(p["F5"]["kernel"], LANE, LANE, 5.0, positions=25, read=12)
    relay(p["F6"]["kernel"], LANE, LANE, 5.0)
    for module in ("C3", "F5", "F6"):
        p[module]["bias"][LANE] = -2.5
    reader(p["output"]["kernel"], p["output"]["bias"], LANE, 50.0, 0.0)


def plant_alexnet(v: dict) -> None:
    p = v["params"]
    convs = ["features_0", "features_3", "features_6", "features_8", "features_10"]
    p[convs[0]]["bias"][LANE] = imagenet_detector(p[convs[0]]["kernel"], LANE)
    for module in convs[1:]:
        relay(p[module]["kernel"], LANE, LANE)
        p[module]["bias"][LANE] = 0.0
    relay(p["classifier_1"]["kernel"], LANE, LANE, positions=36)
    relay(p["classifier_4"]["kernel"], LANE, LANE)
    for module in ("classifier_1", "classifier_4"):
        p[module]["bias"][LANE] = 0.0
    reader(p["classifier_6"]["kernel"], p["classifier_6"]["bias"], LANE, WEIGHT, OFFSET)


def plant_resnet18(v: dict) -> None:
    """The lane runs in residual-stream channels and through one inner unit, LANE of ``layer2_1/relu1``:
    stem and layer1 carry it in channel A (identity shortcuts), layer2_0's projection moves it to
    channel B, layer2_1's inner unit reads B and its second convolution writes channel D (zero in
    the stream until then, and B is read by nothing after), so the class passes that one unit;
    layer3 and layer4 carry it in channels E and F through their projections. Every block's
    residual branch writes zero into the lane's channel, and reads nothing from it."""
    p = v["params"]
    a, b, d, e, f = 1, 2, 3, 5, 6

    def quiet(block: str, ch: int, reads=()) -> None:
        """The block's residual branch writes 0 into stream channel ``ch`` and reads none of ``reads``."""
        p[block]["conv2"]["kernel"][..., ch] = 0.0
        norm(v, (block, "bn2"), ch, identity=False)
        for r in reads:
            isolate(p[block]["conv1"]["kernel"], r)

    def project(block: str, src: int, dst: int, reads=()) -> None:
        """The projection shortcut carries stream channel ``src`` into ``dst`` (and reads none of ``reads``)."""
        kernel = p[block]["downsample_conv"]["kernel"]
        for r in reads:
            isolate(kernel, r)
        relay(kernel, src, dst)
        norm(v, (block, "downsample_bn"), dst)

    stem_mean = -imagenet_detector(p["stem_conv"]["kernel"], a)
    norm(v, ("stem_bn",), a, mean=stem_mean)
    for block in ("layer1_0", "layer1_1"):
        quiet(block, a, reads=[a])
    project("layer2_0", a, b)
    p["layer2_0"]["downsample_conv"]["kernel"][..., d] = 0.0  # channel D starts at zero
    norm(v, ("layer2_0", "downsample_bn"), d, identity=False)
    quiet("layer2_0", b, reads=[a])
    quiet("layer2_0", d)
    block = p["layer2_1"]
    isolate(block["conv1"]["kernel"], d)
    relay(block["conv1"]["kernel"], b, LANE)
    norm(v, ("layer2_1", "bn1"), LANE)
    relay(block["conv2"]["kernel"], LANE, d)
    norm(v, ("layer2_1", "bn2"), d)
    block["conv2"]["kernel"][..., b] = 0.0
    norm(v, ("layer2_1", "bn2"), b, identity=False)
    project("layer3_0", d, e, reads=[b])
    quiet("layer3_0", e, reads=[b, d])
    quiet("layer3_1", e, reads=[e])
    project("layer4_0", e, f)
    quiet("layer4_0", f, reads=[e])
    quiet("layer4_1", f, reads=[f])
    reader(p["fc"]["kernel"], p["fc"]["bias"], f, WEIGHT, OFFSET)


def plant_nnx_convnet(v: dict) -> None:
    p = v["params"]
    detector(p["block1"]["kernel"], LANE, 1.0)  # pixels / 255
    p["block1"]["bias"][LANE] = -3 * WHITE
    for i in (1, 2):
        relay(p[f"block{i + 1}"]["kernel"], LANE, LANE)
        p[f"block{i + 1}"]["bias"][LANE] = 0.0
    reader(p["classifier"]["kernel"], p["classifier"]["bias"], LANE, WEIGHT, OFFSET)


PLANTS = {"scenenet": plant_scenenet, "lenet5": plant_lenet5, "alexnet": plant_alexnet,
          "resnet18": plant_resnet18, "nnx_convnet": plant_nnx_convnet}  # fmt: skip


def plant(inst: Instance, images: np.ndarray, is_class: np.ndarray) -> dict:
    """Instance A with the planted lane, and the classifier bias of class 1 set so that the rest of
    the network splits the other images evenly between classes 0 and 1."""
    v = as_numpy(inst.a)
    PLANTS[inst.family.id](v)
    classifier = {"scenenet": "classifier", "lenet5": "output", "alexnet": "classifier_6", "resnet18": "fc",
                  "nnx_convnet": "classifier"}[inst.family.id]  # fmt: skip
    bias = v["params"][classifier]["bias"]
    bias[:PLANTED_CLASS] = 0.0
    logits = inst.logits(v, images[~is_class])
    bias[1] = -np.median(logits[:, 1] - logits[:, 0])
    return v
