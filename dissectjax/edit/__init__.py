"""Edits of trained networks as pure functions of their variables.

* :class:`UnitEdit`: the one unit edit (which units of a layer, replaced by what), applied
  where the layer is sown (:func:`with_edits`), to stored activations (``edit.apply_to``),
  or folded into the weights that read the units (:func:`fold`);
* :func:`transplant`: units of instance A copied into slots of instance B;
* :mod:`~dissectjax.edit.matching`: which unit of B corresponds to which of A.

Edits read a model only through its declared wiring (:mod:`dissectjax.models.wiring`).
"""

from dissectjax.edit.matching import Matching, layer_correlation, layer_matching, match
from dissectjax.edit.transplant import transplant
from dissectjax.edit.unit_edit import UnitEdit, check_units, fold, with_edits

__all__ = [
    "Matching",
    "UnitEdit",
    "check_units",
    "fold",
    "layer_correlation",
    "layer_matching",
    "match",
    "transplant",
    "with_edits",
]
