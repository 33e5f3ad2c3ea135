"""A PyTorch peer of dissectjax, written the way the authors' GPU tools work (netdissect's
``runningstats`` and tally, Bau et al.), to time dissectjax against on the same GPU and data.

Per unit, a sampled quantile sketch on the device: each unit keeps at most ``capacity``
samples of its activations, all of one weight; when they overflow, every unit's samples
are sorted and every other one kept (from a random offset), and the weight doubles, so the
sketch is exact until a unit has seen ``capacity`` values and a uniform sample after
(runningstats' ``RunningQuantile``, with one level). The threshold is the sample at the
weighted rank ``floor(q n)`` from the top (exactly dissectjax's rank rule while the
sketch is exact). The tally upsamples each batch's maps (bilinear, half-pixel centers),
thresholds them, and computes the intersections as one matrix product of the masks
``[U, B x S]`` with the concepts' one-hot labels ``[B x S, C]`` in float16 with float32
accumulation (0/1 values; at most B x S per entry, below 2**24, so exact), added into
int64 totals, so counts above 2**24 stay exact. NetDissect's conditioning: a unit's area
counts for category k only in images where k has a label; a concept counts once per pixel.

The forward pass runs in both passes, as the authors' tools run it. Rows are decoded by a
torch DataLoader (spawned workers) with dissectjax's Broden reader, so decoding costs the
same on both sides.

    python benchmarks/peer_torch.py --dataset DIR --weights resnet18.pth --layer layer4 [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F


class QuantileSketch:
    """Per-unit sampled quantile sketch on the device (one level of runningstats' RunningQuantile)."""

    def __init__(self, units: int, capacity: int = 8192, device="cpu", seed: int = 0):
        self.units, self.capacity, self.device = units, capacity, device
        self.samples = torch.empty((units, 0), device=device)
        self.weight = 1  # values each sample stands for
        self.seen = 0  # values per unit added
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def _offset(self, period: int) -> int:
        return int(torch.randint(period, (1,), generator=self.generator))

    def add(self, values: torch.Tensor) -> None:
        """values [n, U]: n more values of every unit."""
        self.seen += values.shape[0]
        if self.weight > 1:  # sample the new values at the current rate
            values = values[self._offset(self.weight) :: self.weight]
        self.samples = torch.cat([self.samples, values.T.float()], dim=1)
        while self.samples.shape[1] > self.capacity:
            self.samples = torch.sort(self.samples, dim=1).values[:, self._offset(2) :: 2]
            self.weight *= 2

    def thresholds(self, quantile: float) -> torch.Tensor:
        """[U]: each unit's value with floor(q n) values above it (n = values seen), read from the samples."""
        ordered = torch.sort(self.samples, dim=1, descending=True).values
        rank = min(int(np.floor(quantile * self.seen)) // self.weight, ordered.shape[1] - 1)
        return ordered[:, rank]


def exact_dtype(device) -> torch.dtype:
    """The matrix products' operand type: float16 on a GPU (tensor cores, float32 accumulation),
    float32 on a CPU (no fast float16 there); 0/1 values are exact in both."""
    return torch.float16 if str(device).startswith("cuda") else torch.float32


def one_hot_labels(pixel: torch.Tensor, image: torch.Tensor, concepts: int) -> torch.Tensor:
    """[B, S, C] of 0/1 (:func:`exact_dtype`): 1 where a concept labels a pixel (any layer, once) or
    the whole image. pixel long [B, L, S] and image long [B, M] concept indices, -1 none."""
    batch, _, pixels = pixel.shape
    ids = torch.cat([pixel.transpose(1, 2), image[:, None, :].expand(batch, pixels, image.shape[1])], dim=2)
    ids = torch.where(ids < 0, concepts, ids)  # an extra column for "none", dropped below
    onehot = torch.zeros((batch, pixels, concepts + 1), dtype=exact_dtype(pixel.device), device=pixel.device)
    return onehot.scatter_(2, ids, 1.0)[:, :, :concepts]


class Tally:
    """NetDissect's counts: intersection int64 [U, C], unit_area int64 [U, K], concept_area int64 [C]."""

    def __init__(self, units: int, concept_category: np.ndarray, num_categories: int, device="cpu"):
        category = F.one_hot(torch.as_tensor(concept_category, device=device).long(), num_categories)
        self.category = category.to(exact_dtype(device))
        concepts = len(concept_category)
        self.intersection = torch.zeros((units, concepts), dtype=torch.int64, device=device)
        self.unit_area = torch.zeros((units, num_categories), dtype=torch.int64, device=device)
        self.concept_area = torch.zeros(concepts, dtype=torch.int64, device=device)

    def add(self, acts: torch.Tensor, pixel: torch.Tensor, image: torch.Tensor, valid: torch.Tensor,
            thresholds: torch.Tensor) -> None:  # fmt: skip
        """acts [B, U, h, w]; pixel long [B, L, sh, sw]; image long [B, M]; valid bool [B]."""
        batch, layers, sh, sw = pixel.shape
        up = F.interpolate(acts.float(), size=(sh, sw), mode="bilinear", align_corners=False)
        mask = (up > thresholds[None, :, None, None]) & valid[:, None, None, None]  # [B, U, sh, sw]
        pixel = torch.where(valid[:, None, None, None], pixel, -1).reshape(batch, layers, sh * sw)
        image = torch.where(valid[:, None], image, -1)
        onehot = one_hot_labels(pixel, image, self.category.shape[0])  # [B, S, C]
        masks = mask.reshape(batch, -1, sh * sw).to(onehot.dtype)  # [B, U, S]
        inter = torch.einsum("bus,bsc->uc", masks, onehot)  # float32 accumulation of 0/1 products
        self.intersection += inter.round().long()
        area = masks.sum(dim=2, dtype=torch.float32)  # [B, U], exact (at most S)
        present = ((onehot.amax(dim=1) @ self.category) > 0).float()  # [B, K]: categories labelled in the image
        self.unit_area += (area.T @ present).round().long()
        self.concept_area += onehot.sum(dim=1, dtype=torch.float32).sum(0).round().long()


def dissect_arrays(acts: np.ndarray, pixel: np.ndarray, image: np.ndarray, concept_category: np.ndarray,
                   num_categories: int, quantile: float, batch_size: int = 16, capacity: int = 8192,
                   device="cpu"):  # fmt: skip
    """The peer on stored activations acts [N, h, w, U] and labels pixel [N, L, sh, sw], image
    [N, M] (concept indices, -1 none): (thresholds [U], intersection, unit_area, concept_area)."""
    units = acts.shape[-1]
    sketch = QuantileSketch(units, capacity, device)
    for i in range(0, len(acts), batch_size):
        sketch.add(torch.as_tensor(acts[i : i + batch_size], device=device).reshape(-1, units))
    thresholds = sketch.thresholds(quantile)
    tally = Tally(units, concept_category, num_categories, device)
    for i in range(0, len(acts), batch_size):
        chunk = torch.as_tensor(acts[i : i + batch_size], device=device).permute(0, 3, 1, 2)
        rows = len(chunk)
        tally.add(chunk, torch.as_tensor(pixel[i : i + batch_size], device=device).long(),
                  torch.as_tensor(image[i : i + batch_size], device=device).long(),
                  torch.ones(rows, dtype=torch.bool, device=device), thresholds)  # fmt: skip
    return (thresholds.cpu().numpy(), tally.intersection.cpu().numpy(), tally.unit_area.cpu().numpy(),
            tally.concept_area.cpu().numpy())  # fmt: skip


# ---- end to end from a Broden directory ---------------------------------------------------------------
class BrodenRows(torch.utils.data.Dataset):
    """Rows of a Broden directory (of one image and label size) through dissectjax's reader:
    (image uint8 [H, W, 3], pixel int32 [L, sh, sw], image-level int32 [M]); what is not asked
    for is an empty array."""

    def __init__(self, root: str, labels: bool):
        self.root, self.labels, self.ds = root, labels, None

    def __len__(self):
        return len(self._ds())

    def _ds(self):
        if self.ds is None:  # opened in each worker
            from dissectjax.data.broden import BrodenDataset

            self.ds = BrodenDataset(self.root)
        return self.ds

    def __getitem__(self, i):
        ds = self._ds()
        picture = np.array(ds.load_image(i))  # writable, as torch wants it
        if self.labels:
            return (picture, *ds.labels(i))
        return picture, np.zeros(0, np.int32), np.zeros(0, np.int32)


def loader(root: str, labels: bool, batch_size: int, workers: int):
    return torch.utils.data.DataLoader(BrodenRows(root, labels), batch_size=batch_size, num_workers=workers,
                                       multiprocessing_context="spawn" if workers else None, pin_memory=False,
                                       persistent_workers=False, prefetch_factor=4 if workers else None)  # fmt: skip


def preprocess(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W], torchvision's normalization."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.as_tensor(mean, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / torch.as_tensor(std, device=x.device).view(1, 3, 1, 1)


def dissect_model(model, layer: str, root: str, quantile: float, batch_size: int, workers: int, device,
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), say=print):  # fmt: skip
    """The peer end to end: pass 1 (decode, forward, sketch), pass 2 (decode images and labels,
    forward again, tally). Returns (thresholds, counts tuple, {stage: seconds})."""
    from dissectjax.data.broden import BrodenDataset

    ds = BrodenDataset(root)
    model = model.to(device).eval()
    seconds = {}

    def forward(images):
        with torch.no_grad():
            _, acts = model(preprocess(images.to(device, non_blocking=True), mean, std))
        return acts[layer]

    start = time.perf_counter()
    sketch = None
    for images, _, _ in loader(root, False, batch_size, workers):
        acts = forward(images)
        if sketch is None:
            sketch = QuantileSketch(acts.shape[1], device=device)
        sketch.add(acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1]))
    thresholds = sketch.thresholds(quantile)
    _sync(device)
    seconds["pass 1"] = time.perf_counter() - start
    start = time.perf_counter()
    tally = Tally(len(thresholds), ds.concepts.category, ds.concepts.num_categories, device)
    for images, pixel, image in loader(root, True, batch_size, workers):
        acts = forward(images)
        valid = torch.ones(len(pixel), dtype=torch.bool, device=device)
        tally.add(acts, pixel.to(device).long(), image.to(device).long(), valid, thresholds)
    _sync(device)
    seconds["pass 2"] = time.perf_counter() - start
    counts = (tally.intersection.cpu().numpy(), tally.unit_area.cpu().numpy(), tally.concept_area.cpu().numpy())
    return thresholds.cpu().numpy(), counts, seconds


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def labels_of(counts, concept_category: np.ndarray, num_categories: int, iou_threshold: float = 0.04):
    """Each unit's best concept and whether it is a detector, by dissectjax's labelling rule."""
    from dissectjax.stats.labels import iou, label_units

    intersection, unit_area, concept_area = counts
    table = iou(intersection, unit_area, concept_area, concept_category)
    return label_units(table, concept_category, num_categories, iou_threshold)


def agreement(ours: str, theirs: str, dataset: str) -> str:
    """One line: how many units get the same label (and detector status) from two saved counts
    (.npz of thresholds, intersection, unit_area, concept_area), and their speed ratio."""
    from dissectjax.data.broden import BrodenDataset

    concepts = BrodenDataset(dataset).concepts
    a, b = np.load(ours), np.load(theirs)
    la, lb = (labels_of((x["intersection"], x["unit_area"], x["concept_area"]), concepts.category,
                        concepts.num_categories) for x in (a, b))  # fmt: skip
    same = float(np.mean(la.label == lb.label))
    detectors = float(np.mean(la.detector == lb.detector))
    close = float(np.mean(np.abs(a["thresholds"] - b["thresholds"]) <= 1e-3 * np.abs(a["thresholds"]).max()))
    return (f"labels agree on {same:.1%} of {len(la.label)} units, detector or not on {detectors:.1%}; "
            f"thresholds within 0.1% of the largest on {close:.1%}; detectors {int(la.detector.sum())} (dissectjax) "
            f"vs {int(lb.detector.sum())} (peer); dissectjax {float(b['seconds']) / float(a['seconds']):.1f}x "
            "the peer's speed")  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a Broden-format directory")
    p.add_argument("--weights", required=True, help="a torchvision ResNet-18 state dict (.pth)")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--quantile", type=float, default=0.005)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--counts", help="write the counts here (.npz), to compare with dissectjax's")
    p.add_argument("--compare", help="dissectjax's counts (.npz of bench --counts-out): print the agreement")
    a = p.parse_args(argv)
    from torch_models import build

    state = torch.load(a.weights, map_location="cpu", weights_only=True)
    model = build("resnet18", state["fc.weight"].shape[0])
    model.load_state_dict(state)
    thresholds, counts, seconds = dissect_model(model, a.layer, a.dataset, a.quantile, a.batch_size, a.workers,
                                                a.device)  # fmt: skip
    from dissectjax.data.broden import BrodenDataset

    n = len(BrodenDataset(a.dataset))
    total = sum(seconds.values())
    print(f"peer (PyTorch {torch.__version__}, {a.device}): pass 1 {n / seconds['pass 1']:,.1f} img/s, "
          f"pass 2 {n / seconds['pass 2']:,.1f} img/s, end to end {n / total:,.1f} img/s ({total:.1f} s)")  # fmt: skip
    if a.counts:
        np.savez(a.counts, thresholds=thresholds, intersection=counts[0], unit_area=counts[1],
                 concept_area=counts[2], seconds=total)  # fmt: skip
        if a.compare:
            print(agreement(a.compare, a.counts, a.dataset))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
