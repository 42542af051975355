"""More real frameworks from PyPI: Falcon, Bottle, Pyramid and a plain Werkzeug app
(tests/apps/frameworks/*_app.py), each mounted at /<framework>/ of one server, with the
Python thread pool (``wsgi_threads 4``) and inline (``wsgi_threads 0``).

For each framework: a page, a URL-encoded form POST parsed with the framework's own API and
echoed, a response streamed in three pieces through the framework's generator/stream API
(chunked framing, exact body, the pieces sent apart), the framework's own 404, and a
handler that raises: a 500 from the framework (Falcon, Bottle) or from the module (Pyramid,
Werkzeug, where the exception leaves the app), with the traceback in error.log.
"""

import subprocess
import urllib.parse

import pytest

from harness import explain

FRAMEWORKS = {
    # name: (module to import in the venv, who answers the 500, text of its 404 page)
    "falcon": ("falcon", "framework", "404 Not Found"),
    "bottle": ("bottle", "framework", "Not Found"),
    "pyramid": ("pyramid", "module", "The resource could not be found."),
    "werkzeug": ("werkzeug", "module", "Not Found"),
}
MODES = {"threads": 4, "inline": 0}

FRAMEWORKS_CONF = """
    wsgi_python_home @VENV@;
    wsgi_python_path @APPS@/frameworks;
    wsgi_threads {threads};
    server {{
        listen 127.0.0.1:@PORT@;
{locations}
    }}
"""
LOCATION = """
        location /{name}/ {{
            wsgi_app @APPS@/frameworks/{name}_app.py;
            wsgi_script_name /{name};
        }}"""


@pytest.fixture(scope="module", params=list(MODES))
def frameworks_server(request, nginx_module_servers, flavor):
    modules = [module for module, _, _ in FRAMEWORKS.values()]
    check = subprocess.run([str(flavor.venv_python), "-c", "import " + ", ".join(modules)],
                           capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        pytest.skip(f"{', '.join(modules)} not all installed in {flavor.venv} "
                    f"(tests/requirements.txt): {check.stderr.strip().splitlines()[-1:]}")
    conf = FRAMEWORKS_CONF.format(
        threads=MODES[request.param],
        locations="".join(LOCATION.format(name=name) for name in FRAMEWORKS))
    srv = nginx_module_servers(conf, name=f"frameworks-{request.param}")
    srv.mode = request.param
    return srv


@pytest.fixture(params=list(FRAMEWORKS))
def framework(request):
    return request.param


def chunk_sizes(raw_body: bytes) -> list:
    """The sizes of the chunks of a chunked body, the final 0 included."""
    sizes, pos = [], 0
    while True:
        eol = raw_body.index(b"\r\n", pos)
        size = int(raw_body[pos:eol].split(b";")[0], 16)
        sizes.append(size)
        if size == 0:
            return sizes
        pos = eol + 2 + size + 2


def test_page(frameworks_server, framework):
    """GET /<framework>/ renders the framework's HTML page, which sees SCRIPT_NAME and
    PATH_INFO split at the mount."""
    resp = frameworks_server.get(f"/{framework}/")
    assert resp.status_code == 200, explain(resp, frameworks_server)
    assert resp.headers["Content-Type"].startswith("text/html")
    assert f"<h1>Hello from {framework} " in resp.text
    assert f"script_name=/{framework} path=/</p>" in resp.text


def test_form_post(frameworks_server, framework):
    """A URL-encoded POST (a repeated field, UTF-8, '&' and '=' in a value): the framework's
    form parser sees every value."""
    body = urllib.parse.urlencode([("name", "Zoë & co=1"), ("color", "red"),
                                   ("color", "grün")]).encode()
    resp = frameworks_server.post(
        f"/{framework}/form", data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200, explain(resp, frameworks_server)
    assert resp.headers["Content-Type"].startswith("text/plain")
    resp.encoding = "utf-8"
    assert resp.text == f"{framework} form: name=Zoë & co=1 colors=red,grün\n"


def test_streamed_response(frameworks_server, framework):
    """The framework's streaming API (a generator): a chunked HTTP/1.1 response, complete,
    with the exact body, each piece in its own chunk, sent as it was produced."""
    resp = frameworks_server.raw("GET", f"/{framework}/stream")
    assert resp.status == 200, explain(resp, frameworks_server)
    assert resp.chunked, resp.headers
    assert resp.header("Content-Length") is None
    assert resp.complete, resp.raw_body
    expected = [f"piece-{n} of 3 from {framework}\n".encode() for n in (1, 2, 3)]
    assert resp.body == b"".join(expected)
    assert chunk_sizes(resp.raw_body) == [len(p) for p in expected] + [0]
    first, third = resp.arrival_time(b"piece-1"), resp.arrival_time(b"piece-3")
    assert third - first >= 0.3, f"piece-1 at {first:.2f}s, piece-3 at {third:.2f}s"


def test_not_found(frameworks_server, framework):
    """The framework's own 404 page passes through."""
    resp = frameworks_server.get(f"/{framework}/no/such/page")
    assert resp.status_code == 404, explain(resp, frameworks_server)
    assert FRAMEWORKS[framework][2] in resp.text
    assert "nginx" not in resp.text  # not nginx's stock page


def test_handler_raises(frameworks_server, framework):
    """A handler that raises: 500, either the framework's error page or the module's, and the
    traceback in error.log (the framework writes it to wsgi.errors, or the module logs it)."""
    mark = frameworks_server.log_mark()
    resp = frameworks_server.get(f"/{framework}/boom")
    assert resp.status_code == 500, explain(resp, frameworks_server)
    needle = f"ngxtest-{framework}-boom: this handler fails on purpose"
    assert needle not in resp.text
    log = frameworks_server.wait_log(needle, since=mark)
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: " + needle in log
    if FRAMEWORKS[framework][1] == "framework":
        assert "nginx" not in resp.text, "expected the framework's own 500 page"
    # The worker keeps serving.
    again = frameworks_server.get(f"/{framework}/")
    assert again.status_code == 200, explain(again, frameworks_server)
