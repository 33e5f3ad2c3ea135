"""Which wiring a model's layer has: declared by the model, or traced from its computation.

unit_wiring(model, layer[, variables, example]) -> Wiring
    model.unit_wiring(layer)                           where the model declares it
    traced_wiring(model, variables, example, layer)    any other sown linen model
"""

from __future__ import annotations

from collections.abc import Mapping

from dissectjax.errors import DissectError
from dissectjax.models.traced_wiring import traced_wiring
from dissectjax.models.wiring import Wiring


def unit_wiring(model, layer: str, variables: Mapping | None = None, example=None) -> Wiring:
    """``model.unit_wiring(layer)`` where the model declares its wiring; otherwise, given its
    ``variables`` and an ``example`` batch, the wiring found by tracing its computation
    (:func:`dissectjax.models.traced_wiring.traced_wiring`), or an error saying why not."""
    if hasattr(model, "unit_wiring"):
        return model.unit_wiring(layer)
    if variables is not None and example is not None:
        return traced_wiring(model, variables, example, layer)
    raise DissectError(
        f"{type(model).__name__} declares no unit wiring (a unit_wiring(layer) method), so its units cannot be "
        "folded into weights or transplanted without tracing it (pass its variables and an example batch); edits "
        "applied where a layer is sown (dissectjax.edit.with_edits) work on any model"
    )
