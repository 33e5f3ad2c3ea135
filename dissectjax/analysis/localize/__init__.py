"""Training that puts named concepts into chosen units, and measuring whether it did.

* :mod:`~dissectjax.analysis.localize.losses`: concept supervision of chosen units,
  sparsity / class-selectivity regularizers of a layer's activations, and the alignment
  of a concept-whitened layer's axes (:mod:`dissectjax.models.whitening`) with concepts;
  :func:`dissectjax.train.make_train_step` adds them to the task loss
  (:func:`dissectjax.train.losses.total_loss`, which leaves zero-strength terms out);
* :mod:`~dissectjax.analysis.localize.recipe`: what a run localizes (concepts, layer,
  strengths), stored in its checkpoint;
* :mod:`~dissectjax.analysis.localize.modularity`: variants against a baseline
  (``dissectjax modularity``). Whitened layers are folded into plain units first
  (:func:`dissectjax.models.scenenet.fold_whitening`, the same function).
"""

from dissectjax.analysis.localize.losses import (
    alignment_loss,
    class_selectivity_loss,
    concept_supervision_loss,
    l1_activity,
)
from dissectjax.analysis.localize.recipe import Recipe

__all__ = ["Recipe", "alignment_loss", "class_selectivity_loss", "concept_supervision_loss", "l1_activity"]
