"""The interactive app: ask a dissection questions in a browser, ablate units live."""

from dissectjax.app.server import create_app, serve
from dissectjax.app.service import AppService, Classifier, load_classifier, open_service

__all__ = ["AppService", "Classifier", "create_app", "load_classifier", "open_service", "serve"]
