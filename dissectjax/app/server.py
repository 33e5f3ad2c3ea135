"""The local web app: a Flask JSON API over :class:`AppService`, and one page that uses it.

    GET  /                          the page
    GET  /api/layers                model, dataset, layers (units, detectors), classes, concepts
    GET  /api/layer/LAYER           header, detectors per concept, every unit's label
    GET  /api/concept?name=C[&layer=L][&limit=N]
                                    units ranked by IoU with concept C
    GET  /api/unit/LAYER/U          label, top images with mask, IoU per concept, per-class statistics
    GET  /api/compare?a=L1&b=L2     detectors and unique detectors per category, shared concepts
    POST /api/ablate                {"layer": L, "units": [u, ...], "mode": "zero"|"mean"}
                                    per-class accuracy and balanced accuracy, before and after

Bad input gets a 4xx with ``{"error": message}``, never a stack trace. The server binds
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import os

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from dissectjax.app.service import AppService
from dissectjax.errors import DissectError

LOOPBACK = "127.0.0.1"
MAX_REQUEST_BYTES = 64 * 1024
PAGE = os.path.join(os.path.dirname(__file__), "page.html")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only.

    >>> is_loopback("localhost"), is_loopback("127.0.0.2"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BadRequest(DissectError):
    """Input the API cannot use (a 400)."""


def _int(value, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be an integer, got {value!r}") from None


def _arg(name: str) -> str:
    value = request.args.get(name, "").strip()
    if not value:
        raise BadRequest(f"the query parameter {name!r} is required")
    return value


def create_app(service: AppService) -> Flask:
    """The Flask application answering from ``service``."""
    app = Flask("dissectjax")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False

    @app.errorhandler(DissectError)
    def bad_input(e):
        return jsonify(error=str(e)), 400

    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=f"{e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def internal_error(e):
        app.logger.exception("request failed")
        return jsonify(error=f"internal error ({type(e).__name__}); see the server log"), 500

    @app.get("/")
    def page():
        with open(PAGE, encoding="utf-8") as f:
            return f.read(), 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/api/layers")
    def layers():
        return jsonify(service.layers())

    @app.get("/api/layer/<path:layer>")
    def layer(layer):
        from dissectjax.report import LayerView

        service.dissection.layer(layer)
        return jsonify(LayerView(service.dissection, layer).to_json())

    @app.get("/api/concept")
    def concept():
        limit = _int(request.args.get("limit", 20), "limit")
        return jsonify(service.concept(_arg("name"), request.args.get("layer") or None, limit).to_json())

    @app.get("/api/unit/<path:layer>/<unit>")
    def unit(layer, unit):
        return jsonify(service.unit(layer, _int(unit, "unit")).to_json())

    @app.get("/api/compare")
    def compare():
        return jsonify(service.compare(_arg("a"), _arg("b")).to_json())

    @app.post("/api/ablate")
    def ablate():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest('send a JSON object: {"layer": "conv5", "units": [3, 17]}')
        units = body.get("units")
        if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
            raise BadRequest(f"'units' must be a list of integers, got {units!r}"[:300])
        layer = body.get("layer")
        if not isinstance(layer, str):
            raise BadRequest("'layer' must be a layer name")
        return jsonify(service.ablate(layer, units, body.get("mode", "zero")).to_json())

    return app


def serve(service: AppService, host: str = "127.0.0.1", port: int = 8050, ready=None) -> None:
    """Runs the app until interrupted; ``ready(server)`` is called once it listens (port 0: any free port)."""
    from werkzeug.serving import make_server

    server = make_server(host, port, create_app(service), threaded=True)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()
