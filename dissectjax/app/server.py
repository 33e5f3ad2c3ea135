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

Bad input gets a 4xx with ``{"error": message}`` (one line), never a stack trace. The server binds
127.0.0.1 unless told otherwise, and answers only requests that name it (against DNS rebinding, a
page elsewhere that points its own name at this machine):

- the ``Host`` header must be one of the app's allowed hosts: the bound address with the bound
  port, for a loopback bind also ``localhost`` and ``[::1]``, and the names given with
  ``--allow-host NAME[:PORT]`` (else 421);
- a POST whose ``Origin`` is present must come from ``http://`` + an allowed host (else 403);
- an API request a browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site`` is refused (403);
- responses may not be framed or embedded by other sites (``SECURITY_HEADERS``);
- a JSON body must be UTF-8, at most ``MAX_REQUEST_BYTES`` (413) and ``MAX_JSON_DEPTH`` deep (400).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Callable, Iterable

from flask import Flask, jsonify, request
from werkzeug.exceptions import Forbidden, HTTPException, MisdirectedRequest

from dissectjax.app.service import AppService
from dissectjax.errors import DissectError

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TEST_CLIENT_HOSTS = ("localhost",)  # what Flask's test client sends; serve() is strict
MAX_REQUEST_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
MAX_MESSAGE = 500
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",  # no page elsewhere frames the app to click its buttons
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",  # no page elsewhere embeds its answers
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BROWSER_OWN_SITES = frozenset({"same-origin", "none"})  # Sec-Fetch-Site of the app's page, or a typed URL
ABLATE_EXAMPLE = '{"layer": "conv5", "units": [3, 17]}'
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


def is_wildcard(host: str) -> bool:
    """Whether binding ``host`` listens on every interface ("", 0.0.0.0, ::)."""
    if host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def authority(host: str, port: int | None) -> str:
    """``host:port`` as a Host header writes it: lower case, an IP address in its canonical form,
    IPv6 in brackets, no port if None. Also the URL's authority (``http://`` + this).

    >>> authority("::1", 8050), authority("LocalHost", None), authority("0:0::1", None)
    ('[::1]:8050', 'localhost', '[::1]')
    """
    host = host.lower().removeprefix("[").removesuffix("]")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass  # a name
    if ":" in host:
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")


def split_host(text: str) -> tuple[str, int | None] | None:
    """``(host, port or None)`` of a Host header (``name``, ``name:port``, ``[v6]:port``), the
    host in :func:`authority`'s form; None when ``text`` is not one (e.g. a bare IPv6 address,
    a URL, a port past 65535).

    >>> split_host("[::1]:8050"), split_host("LocalHost"), split_host("::1"), split_host("x:99999")
    (('[::1]', 8050), ('localhost', None), None, None)
    """
    match = _HOST_PORT.fullmatch(text.strip())
    if match is None or (match["port"] and int(match["port"]) > 65535):
        return None
    if match["v6"]:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            return None
    return authority(match["v6"] or match["name"], None), int(match["port"]) if match["port"] else None


def allowed_host(text: str) -> tuple[str, int | None]:
    """An ``--allow-host`` value: a host name or address, optionally with ``:PORT`` (a bare IPv6
    address is taken whole). DissectError when it is none of these.

    >>> allowed_host("Box.lan"), allowed_host("localhost:9000"), allowed_host("::1")
    (('box.lan', None), ('localhost', 9000), ('[::1]', None))
    """
    try:
        return authority(str(ipaddress.IPv6Address(text.strip())), None), None
    except ValueError:
        pass
    parsed = split_host(text)
    if parsed is None:
        raise DissectError(f"--allow-host {text!r} is not a host; expected a host name or address, optionally with "
                           ":PORT (e.g. box.lan, localhost:9000 for an SSH tunnel, [::1]:9000)")  # fmt: skip
    return parsed


def allowed_hosts(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host headers that name a server bound to ``host``:``port`` (port 80 also without a port).

    A loopback bind also answers to ``localhost`` and ``[::1]``; a wildcard bind to those, this
    machine's name and the wildcard itself (the URL ``serve`` prints; a literal address cannot be
    rebound). ``extra`` (:func:`allowed_host` values) are accepted too: on their own port if they
    give one (an SSH tunnel's local end, ``localhost:9000``), else on ``port``.

    >>> sorted(allowed_hosts("127.0.0.1", 8050))
    ['127.0.0.1:8050', '[::1]:8050', 'localhost:8050']
    >>> sorted(allowed_hosts("::1", 8050, ["localhost:9000"]))
    ['127.0.0.1:8050', '[::1]:8050', 'localhost:8050', 'localhost:9000']
    """
    names = {host} - {""}
    if is_wildcard(host):
        names |= {*LOOPBACK_NAMES, socket.gethostname()}
    if is_loopback(host):
        names |= set(LOOPBACK_NAMES)
    entries = [(name, None) for name in names] + [allowed_host(x) for x in extra]
    with_ports = lambda p: (p, None) if p == 80 else (p,)
    return frozenset(authority(name, p) for name, own in entries for p in with_ports(own or port))


def _shown(value: str, limit: int = 100) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters."""
    return repr(value[:limit] + ("..." if len(value) > limit else ""))


def host_refusal(host: str | None, allowed: frozenset[str]) -> str | None:
    """Why a request with this Host header is refused, or None if it names one of ``allowed``
    (compared in :func:`authority`'s form, so ``[0:0::1]:8050`` is ``[::1]:8050``)."""
    parsed = None if host is None else split_host(host)
    if parsed is not None and authority(*parsed) in allowed:
        return None
    what = "a request without a Host header" if host is None else f"Host {_shown(host)}"
    accepted = ", ".join(sorted(allowed)) or "nothing yet"
    return (f"refused {what}: this app answers only to {accepted} (a guard against DNS rebinding); "
            "open one of those, or start the app with --host set to the address you use, or --allow-host "
            "NAME[:PORT] for a name (or an SSH tunnel's local end) that reaches it")  # fmt: skip


def origin_refusal(method: str, origin: str | None, allowed: frozenset[str]) -> str | None:
    """Why a request from a page at ``origin`` is refused (POSTs from other origins), or None."""
    if method in SAFE_METHODS or origin is None:
        return None
    parsed = split_host(origin[len("http://") :]) if origin.lower().startswith("http://") else None
    if parsed is not None and authority(*parsed) in allowed:
        return None
    return f"refused a cross-origin {method} from {_shown(origin)}: only this app's own page may send one"


def site_refusal(path: str, fetch_site: str | None) -> str | None:
    """Why a browser request to the API from another site is refused (``Sec-Fetch-Site``), or None."""
    if not path.startswith("/api/") or fetch_site is None or fetch_site.lower() in BROWSER_OWN_SITES:
        return None
    return f"refused an API request from another site (Sec-Fetch-Site: {_shown(fetch_site, 20)})"


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` on one line, at most ``limit`` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_JSON_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in the JSON ``text`` (brackets inside strings ignored).

    >>> json_depth('{"a": [[1], "]]"]}'), json_depth("3")
    (3, 0)
    """
    depth = deepest = 0
    for bracket in _JSON_BRACKETS.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json_object(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict:
    """A request body as a JSON object; BadRequest if it is not UTF-8, too deep, not JSON or no object."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the body is not UTF-8 (byte {e.start}); send a JSON object: {ABLATE_EXAMPLE}") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise BadRequest(f"the JSON body nests {depth} levels deep; at most {max_depth} are accepted")
    try:
        body = json.loads(text)
    except ValueError as e:
        raise BadRequest(f"the body is not valid JSON ({e}); send a JSON object: {ABLATE_EXAMPLE}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"send a JSON object: {ABLATE_EXAMPLE}")
    return body


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


def create_app(service: AppService, allowed_hosts: Iterable[str] | None = None) -> Flask:
    """The Flask application answering from ``service``, to requests whose Host is one of
    ``allowed_hosts`` (``host:port`` as the header writes it; default: the test client's
    ``localhost``; :func:`serve` passes the bound address's)."""
    given = TEST_CLIENT_HOSTS if allowed_hosts is None else allowed_hosts
    allowed = frozenset(authority(*parsed) for parsed in map(split_host, given) if parsed is not None)
    app = Flask("dissectjax")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False

    @app.before_request
    def guard():
        refusal = host_refusal(request.headers.get("Host"), allowed)
        if refusal:
            raise MisdirectedRequest(refusal)
        refusal = origin_refusal(request.method, request.headers.get("Origin"), allowed) or site_refusal(
            request.path, request.headers.get("Sec-Fetch-Site")
        )
        if refusal:
            raise Forbidden(refusal)

    @app.after_request
    def secure(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(DissectError)
    def bad_input(e):
        return jsonify(error=one_line(str(e))), 400

    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=one_line(f"{e.name}: {e.description}")), e.code

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
        if not request.is_json:
            raise BadRequest(f"send a JSON object with Content-Type: application/json: {ABLATE_EXAMPLE}")
        body = parse_json_object(request.get_data(cache=True))  # 413 past MAX_CONTENT_LENGTH
        units = body.get("units")
        if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
            raise BadRequest(f"'units' must be a list of integers, got {units!r}"[:300])
        layer = body.get("layer")
        if not isinstance(layer, str):
            raise BadRequest("'layer' must be a layer name")
        return jsonify(service.ablate(layer, units, body.get("mode", "zero")).to_json())

    return app


def serve(
    service: AppService,
    host: str = LOOPBACK,
    port: int = 8050,
    ready: Callable | None = None,
    extra_hosts: Iterable[str] = (),
) -> None:
    """Runs the app until interrupted; ``ready(server)`` is called once it listens (port 0: any free port).

    It answers only requests naming the address it is bound to (:func:`allowed_hosts` of the given
    host and of the bound address, with the bound port), and ``extra_hosts`` (:func:`allowed_host`
    values: names on that port, or ``name:port``). ``server.url`` is the address to open.
    """
    from werkzeug.serving import make_server

    server = make_server(host, port, create_app(service, allowed_hosts=()), threaded=True)  # refuses all
    bound_host, bound_port = server.server_address[:2]
    hosts = allowed_hosts(host, bound_port, extra_hosts) | allowed_hosts(bound_host, bound_port)
    server.app = create_app(service, allowed_hosts=hosts)  # before serving: the port is known only now
    server.url = f"http://{authority(bound_host, bound_port)}/"
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()
