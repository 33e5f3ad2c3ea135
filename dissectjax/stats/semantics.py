"""Counting rules by name: how masks and labels become thresholds and counts (docs/SEMANTICS.md).

Two rule sets are offered, chosen by ``--semantics``:

* ``netdissect`` (the default, docs/ARCHITECTURE.md, Semantics): the threshold is the
  (1 - q) quantile by rank; a unit's area counts for category k in every image where k is
  labelled; a concept counts once per pixel however many label layers repeat it.
* ``lite`` (NetDissect-Lite's tally, computed exactly): the threshold is Lite's readout
  position ``int(1000 (1 - q) - 1)`` of 1,000 evenly spaced quantiles, interpolated between
  order statistics; a unit's area counts for category k only in images where its own mask
  covers a pixel labelled with k (or k has an image-level label); a label counts once per
  occurrence, so twice where two label layers of a pixel both hold it.

Lite also carries one image's category indicator into the next image that has only
image-level labels. That is a bug, order-dependent, and not reproduced.
"""

from __future__ import annotations

from typing import NamedTuple

from dissectjax.errors import DissectError

SEMANTICS = ("netdissect", "lite")  # the first is the default
AREA_RULES = ("image", "mask", "all")
QUANTILE_RULES = ("rank", "lite")


class Rules(NamedTuple):
    """One rule set; hashable, so it is a static argument of the compiled kernels.

    semantics: its name (one of :data:`SEMANTICS`).
    area: where a unit's mask area counts for category k: ``"image"``, in images where k is
      labelled; ``"mask"``, where the mask covers a pixel of k or k labels the whole image;
      ``"all"``, in every image.
    repeats: a label counts once per occurrence (a pixel labelled c in two layers counts
      twice for c); False: a concept counts once per pixel.
    quantile: ``"rank"``, the (1 - q) quantile within the rank tolerance; ``"lite"``,
      Lite's interpolated readout, exact (:class:`dissectjax.stats.quantile.LiteSelect`).
    """

    semantics: str
    area: str
    repeats: bool
    quantile: str


def rules(semantics: str = SEMANTICS[0], condition: bool = True) -> Rules:
    """The rules named ``semantics``; ``condition`` False (``--no-condition``) counts a unit's
    area in every image, which only the ``netdissect`` rules offer.

    >>> rules("lite")
    Rules(semantics='lite', area='mask', repeats=True, quantile='lite')
    >>> rules("netdissect", condition=False).area
    'all'
    """
    if semantics not in SEMANTICS:
        raise DissectError(f"semantics must be one of {', '.join(SEMANTICS)}, got {semantics!r}")
    if semantics == "lite":
        if not condition:
            raise DissectError("lite semantics always condition a unit's area on its own mask: "
                               "drop --no-condition, or use --semantics netdissect")  # fmt: skip
        return Rules("lite", "mask", True, "lite")
    return Rules("netdissect", "image" if condition else "all", False, "rank")
