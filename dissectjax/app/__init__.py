"""The interactive app: ask a dissection questions in a browser, ablate units live."""

from dissectjax.app.server import create_app, serve
from dissectjax.app.service import AppService, Classifier, open_service, per_class_accuracy, scene_classifier

__all__ = ["AppService", "Classifier", "create_app", "open_service", "per_class_accuracy", "scene_classifier", "serve"]
