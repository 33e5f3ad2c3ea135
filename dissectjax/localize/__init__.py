"""Training that puts named concepts into chosen units (issue 9): composable pieces.

* :mod:`~dissectjax.localize.whitening`: a concept-whitening layer (whitening, then an
  orthogonal rotation whose first axes are trained to align with named concepts);
* :mod:`~dissectjax.localize.losses`: concept supervision of chosen units, and
  sparsity / class-selectivity regularizers of a layer's activations;
* :func:`~dissectjax.localize.losses.total_loss`: the task loss plus the weighted terms,
  where a term of strength 0 is left out of the computation altogether (training is then
  bit-identical to the baseline's); :func:`dissectjax.train.make_train_step` takes the terms;
* :mod:`~dissectjax.localize.recipe`: what a run localizes (concepts, layer, strengths),
  stored in its checkpoint;
* :mod:`~dissectjax.localize.fold`: a concept-whitened layer folded into plain units (the
  same function at evaluation), so surgery applies to aligned axes;
* :mod:`~dissectjax.localize.modularity`: variants against a baseline (``dissectjax modularity``).
"""

from dissectjax.localize.fold import fold_whitening
from dissectjax.localize.losses import (
    LossTerm,
    class_selectivity_loss,
    concept_supervision_loss,
    l1_activity,
    total_loss,
)
from dissectjax.localize.recipe import Recipe
from dissectjax.localize.whitening import ConceptWhitening, alignment_loss, cayley, whitening_matrix

__all__ = [
    "ConceptWhitening",
    "LossTerm",
    "Recipe",
    "alignment_loss",
    "cayley",
    "class_selectivity_loss",
    "concept_supervision_loss",
    "fold_whitening",
    "l1_activity",
    "total_loss",
    "whitening_matrix",
]
