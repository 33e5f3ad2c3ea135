"""Reports and views of dissection results: static HTML, PNG plots, notebook objects."""

from dissectjax.report.dissection import Dissection
from dissectjax.report.page import render, write_report
from dissectjax.report.views import AblationView, ConceptQuery, LayerComparison, LayerView, UnitView

__all__ = [
    "AblationView",
    "ConceptQuery",
    "Dissection",
    "LayerComparison",
    "LayerView",
    "UnitView",
    "render",
    "write_report",
]
