"""The app answers only requests that name it (DNS rebinding), only its own page may POST, and
hostile bodies get a one-line JSON 4xx, never a 500 or a stack trace."""

import json
import socket
import urllib.error
import urllib.request

import pytest
from conftest import serve_in_thread

from dissectjax.app import AppService, create_app
from dissectjax.app.server import MAX_JSON_DEPTH, MAX_MESSAGE, allowed_host, allowed_hosts, json_depth, split_host
from dissectjax.errors import DissectError
from dissectjax.report import Dissection

PORT = 8050
ABLATE = {"layer": "conv5", "units": [1]}
NO_MODEL = "--checkpoint"  # what a request that got past the guards hears from a service without a model


def nested(depth: int) -> list:
    """Lists nested ``depth`` deep: ``[[...]]``."""
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.fixture(scope="module")
def service(scene_dissection):
    return AppService(Dissection.load(scene_dissection[0]))  # no model: cheap, and ablation says why


@pytest.fixture(scope="module")
def client(service):
    return create_app(service, allowed_hosts=allowed_hosts("127.0.0.1", PORT)).test_client()


def post(client, body, host=f"127.0.0.1:{PORT}", **headers):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post("/api/ablate", data=data, content_type="application/json", headers={"Host": host, **headers})


def assert_json_error(response, status: int, *words: str) -> str:
    """The response is a JSON ``{"error": one line}`` with ``status`` naming each of ``words``."""
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.is_json and set(response.json) == {"error"}
    message = response.json["error"]
    assert "\n" not in message and "Traceback" not in message and len(message) <= MAX_MESSAGE
    for word in words:
        assert word in message
    return message


def test_allowed_hosts_name_the_bound_address():
    assert allowed_hosts("127.0.0.1", 9000) == {"127.0.0.1:9000", "localhost:9000", "[::1]:9000"}
    assert allowed_hosts("::1", 9000) == {"127.0.0.1:9000", "localhost:9000", "[::1]:9000"}
    assert allowed_hosts("192.168.1.2", 9000) == {"192.168.1.2:9000"}
    assert allowed_hosts("192.168.1.2", 9000, ["Box.lan"]) == {"192.168.1.2:9000", "box.lan:9000"}
    assert {"127.0.0.1", "localhost", "127.0.0.1:80"} <= allowed_hosts("127.0.0.1", 80)  # browsers omit :80
    loopback = {"127.0.0.1:9000", "localhost:9000", "[::1]:9000"}
    assert allowed_hosts("0.0.0.0", 9000) == {"0.0.0.0:9000", f"{socket.gethostname().lower()}:9000", *loopback}
    assert "[::]:9000" in allowed_hosts("::", 9000)


def test_allow_host_names_and_ports():
    """--allow-host NAME answers on the bound port; NAME:PORT on its own (an SSH tunnel's local end)."""
    assert allowed_hosts("127.0.0.1", 9000, ["box.lan", "localhost:8000", "[::1]:7000", "::2"]) == {
        "127.0.0.1:9000",
        "localhost:9000",
        "[::1]:9000",
        "box.lan:9000",
        "localhost:8000",
        "[::1]:7000",
        "[::2]:9000",
    }
    assert split_host("[0:0:0:0:0:0:0:1]:9000") == ("[::1]", 9000) and split_host("[::1") is None
    for bad in ("http://box.lan", "box.lan:99999", "", "a b", "box.lan/x", "[nope]:80"):
        with pytest.raises(DissectError, match="is not a host; expected a host name or address"):
            allowed_host(bad)


@pytest.mark.parametrize("host", [f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}", f"LocalHost:{PORT}",
                                  f"[0:0:0:0:0:0:0:1]:{PORT}"])  # fmt: skip
def test_accepted_hosts(client, host):
    response = client.get("/api/layers", headers={"Host": host})
    assert response.status_code == 200 and [x["layer"] for x in response.json["layers"]] == ["conv4", "conv5"]
    page = client.get("/", headers={"Host": host})
    assert page.status_code == 200
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cross-Origin-Resource-Policy"] == "same-origin"


@pytest.mark.parametrize(
    "host", [f"evil.example:{PORT}", f"127.0.0.1:{PORT + 1}", "127.0.0.1", "localhost", "evil.example", "x" * 500,
             f"[::1]:{PORT + 1}", f"[::1:{PORT}", f"::1:{PORT}"]
)  # fmt: skip
@pytest.mark.parametrize("method, path", [("get", "/"), ("get", "/api/layers"), ("post", "/api/ablate"),
                                          ("get", "/api/nothing"), ("options", "/api/ablate")])  # fmt: skip
def test_refused_hosts(client, host, method, path):
    response = getattr(client, method)(path, json=ABLATE, headers={"Host": host})
    message = assert_json_error(response, 421, "refused Host", host[:50], f"127.0.0.1:{PORT}", f"localhost:{PORT}")
    assert "DNS rebinding" in message


def test_create_app_by_default_answers_the_test_client_only(service):
    client = create_app(service).test_client()
    assert client.get("/api/layers").status_code == 200  # the test client sends Host: localhost
    assert_json_error(client.get("/api/layers", headers={"Host": "evil.example"}), 421, "evil.example")
    assert_json_error(create_app(service, allowed_hosts=()).test_client().get("/"), 421, "nothing yet")


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        f"http://evil.example:{PORT}",
        f"http://127.0.0.1:{PORT + 1}",
        f"https://127.0.0.1:{PORT}",
        "null",
        f"http://127.0.0.1:{PORT}.evil.example",
    ],
)
def test_cross_origin_post_is_refused(client, origin):
    assert_json_error(post(client, ABLATE, Origin=origin), 403, "cross-origin POST", origin[:50])


@pytest.mark.parametrize("origin", [f"http://127.0.0.1:{PORT}", f"http://localhost:{PORT}", None])
def test_same_origin_or_no_origin_post_reaches_the_app(client, origin):
    headers = {"Origin": origin} if origin else {}
    assert_json_error(post(client, ABLATE, **headers), 400, NO_MODEL)


@pytest.mark.parametrize(
    ("site", "path", "status"),
    [
        ("cross-site", "/api/layers", 403),
        ("same-site", "/api/layers", 403),
        ("same-origin", "/api/layers", 200),
        ("none", "/api/layers", 200),
        ("cross-site", "/", 200),  # following a link to the page
    ],
)
def test_browsers_cross_site_api_requests_are_refused(client, site, path, status):
    response = client.get(path, headers={"Host": f"127.0.0.1:{PORT}", "Sec-Fetch-Site": site})
    assert response.status_code == status
    if status == 403:
        assert_json_error(response, 403, "another site", site)


def test_json_depth():
    assert json_depth('{"a": [[1], "]]"]}') == 3 and json_depth('"[[[\\"[["') == 0 and json_depth("3") == 0
    assert json_depth("[" * 5000 + "]" * 5000) == 5000


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("[" * 5000 + "]" * 5000, 400, ("5000 levels deep", f"at most {MAX_JSON_DEPTH}")),
        ('{"a":' * 5000 + "1" + "}" * 5000, 400, ("5000 levels deep",)),
        ({"layer": "conv5", "units": [1], "x": nested(MAX_JSON_DEPTH)}, 400, (f"{MAX_JSON_DEPTH + 1} levels deep",)),
        ({"layer": "conv5", "units": [1], "x": nested(MAX_JSON_DEPTH - 1)}, 400, (NO_MODEL,)),
        ({"layer": "conv5", "units": [1], "x": "[" * 5000}, 400, (NO_MODEL,)),  # brackets in strings are text
        ("[1, 2]", 400, ("JSON object",)),
        ('"conv5"', 400, ("JSON object",)),
        ("null", 400, ("JSON object",)),
        (b'{"layer": "conv5\xff", "units": [1]}', 400, ("not UTF-8",)),
        (b"\xef\xbb\xbf{}", 400, ("not valid JSON",)),  # a BOM is not JSON
        ('{"layer": "conv5", "units": [1]', 400, ("not valid JSON",)),
        ("", 400, ("not valid JSON",)),
        ('{"layer": "conv5", "units": [' + "9" * 5000 + "]}", 400, ("not valid JSON",)),
        ({"layer": "conv5", "units": [1], "pad": "x" * 70_000}, 413, ("Too Large",)),
        ({"layer": "conv5\n" + "x" * 10_000, "units": [1]}, 400, ("unknown layer",)),  # one line, cut short
    ],
)
def test_hostile_bodies_get_a_one_line_4xx(client, body, status, words):
    assert_json_error(post(client, body), status, *words)


def test_a_body_must_say_it_is_json(client):
    response = client.post("/api/ablate", data=json.dumps(ABLATE), content_type="text/plain",
                           headers={"Host": f"127.0.0.1:{PORT}"})  # fmt: skip
    assert_json_error(response, 400, "application/json")


def fetch(url: str, host: str | None = None, origin: str | None = None, body: dict | None = None):
    """(status, JSON) of a real HTTP request, without any proxy."""
    headers = {k: v for k, v in (("Host", host), ("Origin", origin)) if v}
    if body is not None:
        headers["Content-Type"] = "application/json"
    data = None if body is None else json.dumps(body).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(service):
    """``serve`` on a free port in a thread: its (host, port)."""
    server, thread = serve_in_thread(service)
    yield server.server_address[:2]
    server.shutdown()
    thread.join(10)


def test_serve_allows_its_own_port_only(served):
    host, port = served
    url = f"http://{host}:{port}/api/layers"
    assert port > 0 and fetch(url)[0] == 200  # urllib sends Host: 127.0.0.1:PORT
    assert fetch(url, host=f"localhost:{port}")[0] == 200
    for refused in (f"evil.example:{port}", f"127.0.0.1:{port + 1}", "localhost", f"localhost:{PORT}"):
        status, body = fetch(url, host=refused)
        assert status == 421 and refused in body["error"] and f"127.0.0.1:{port}" in body["error"]


def test_serve_refuses_cross_origin_posts(served):
    host, port = served
    url = f"http://{host}:{port}/api/ablate"
    status, body = fetch(url, origin="http://evil.example", body=ABLATE)
    assert status == 403 and "cross-origin" in body["error"]
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", None):
        status, body = fetch(url, origin=origin, body=ABLATE)
        assert status == 400 and NO_MODEL in body["error"]
    status, body = fetch(url, body={"x": nested(MAX_JSON_DEPTH + 1)})
    assert status == 400 and "levels deep" in body["error"]


@pytest.fixture(scope="module")
def served_ipv6(service):
    """``serve`` on ::1 (a free port) with two --allow-host names, in a thread: the server."""
    import threading

    from dissectjax.app import serve

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine cannot bind ::1")
    started, holder = threading.Event(), {}

    def ready(server):
        holder["server"] = server
        started.set()

    args = (service, "::1", 0, ready, ["box.lan", "localhost:9000"])
    thread = threading.Thread(target=serve, args=args, daemon=True)
    thread.start()
    assert started.wait(60)
    yield holder["server"]
    holder["server"].shutdown()
    thread.join(10)


def test_serve_on_ipv6_loopback_prints_a_bracketed_url_and_answers_to_it(served_ipv6):
    port = served_ipv6.server_address[1]
    assert served_ipv6.url == f"http://[::1]:{port}/"
    url = f"{served_ipv6.url}api/layers"
    assert fetch(url)[0] == 200  # urllib sends Host: [::1]:PORT
    for accepted in (f"localhost:{port}", f"box.lan:{port}", "localhost:9000", f"[0:0::1]:{port}"):
        assert fetch(url, host=accepted)[0] == 200, accepted
    for refused in (f"box.lan:{port + 1}", "box.lan", f"evil.example:{port}", f"[::2]:{port}"):
        status, body = fetch(url, host=refused)
        assert status == 421 and f"[::1]:{port}" in body["error"] and "--allow-host" in body["error"], refused
    status, body = fetch(url.replace("layers", "ablate"), origin=f"http://box.lan:{port}", body=ABLATE)
    assert status == 400 and NO_MODEL in body["error"]  # an allowed host's page may POST
