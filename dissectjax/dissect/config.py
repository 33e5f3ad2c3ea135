"""How a dissection measures: quantile, detector threshold, batching (docs/ARCHITECTURE.md, Semantics).

The defaults are the dataclass's own: read them as ``DissectConfig.quantile`` etc.
"""

from __future__ import annotations

import dataclasses

from dissectjax.errors import DissectError
from dissectjax.stats.labels import DETECTOR_RULES
from dissectjax.stats.semantics import SEMANTICS, Rules, rules
from dissectjax.stats.tally import STRATEGIES


@dataclasses.dataclass(frozen=True)
class DissectConfig:
    """quantile: q, the share of each unit's activations above its threshold;
    iou_threshold: the IoU a unit's label needs to make it a detector;
    condition: count unit area only in images where the category has labels;
    batch_size: images per device (the global batch is batch_size x device count);
    strategy: tally kernels, one of ``STRATEGIES`` (None: chosen by backend, same counts);
    top_k: images kept per unit, those of highest maximum activation (0: none);
    detector_rule: how a label's IoU is compared with iou_threshold, one of ``DETECTOR_RULES``:
      ">=" (the default) or ">" (NetDissect's);
    semantics: the counting rules, one of ``SEMANTICS``: "netdissect" (the default) or "lite"
      (NetDissect-Lite's: docs/SEMANTICS.md); ``rules`` spells them out."""

    quantile: float = 0.005
    iou_threshold: float = 0.04
    condition: bool = True
    batch_size: int = 64
    strategy: str | None = None
    top_k: int = 8
    detector_rule: str = DETECTOR_RULES[0]
    semantics: str = SEMANTICS[0]

    def __post_init__(self):
        if not 0.0 < self.quantile < 1.0:
            raise DissectError(f"quantile must be between 0 and 1 (exclusive), got {self.quantile}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise DissectError(f"iou_threshold must be between 0 and 1, got {self.iou_threshold}")
        if self.batch_size < 1:
            raise DissectError(f"batch_size must be positive, got {self.batch_size}")
        if self.top_k < 0:
            raise DissectError(f"top_k must be 0 or more, got {self.top_k}")
        if self.strategy not in (None, *STRATEGIES):
            raise DissectError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.detector_rule not in DETECTOR_RULES:
            raise DissectError(f"detector_rule must be one of {', '.join(map(repr, DETECTOR_RULES))}, "
                               f"got {self.detector_rule!r}")  # fmt: skip
        self.rules  # noqa: B018 (validates semantics against condition)

    @property
    def rules(self) -> Rules:
        """The counting rules this configuration names (:func:`dissectjax.stats.semantics.rules`)."""
        return rules(self.semantics, self.condition)
