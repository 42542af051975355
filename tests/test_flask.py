"""A real framework: Flask (tests/apps/flaskapp/app.py) from the test virtualenv.

``wsgi_python_home`` points at the flavour's test virtualenv (build/venv, or
build/venv-py3.X), where Flask is installed.
"""

import hashlib
import subprocess

import pytest

from harness import explain

FLASK_CONF = """
    wsgi_python_home @VENV@;
    server {
        listen 127.0.0.1:@PORT@;
        client_max_body_size 10m;
        location / {
            wsgi_app @APPS@/flaskapp/app.py:app;
        }
    }
"""


@pytest.fixture(scope="module")
def flask_server(nginx_module_servers, flavor):
    check = subprocess.run([str(flavor.venv_python), "-c", "import flask"], capture_output=True,
                           timeout=60)
    if check.returncode != 0:
        pytest.skip(f"flask is not installed in {flavor.venv}")
    return nginx_module_servers(FLASK_CONF, name="flask")


def test_form_page(flask_server):
    """GET / renders the upload form."""
    resp = flask_server.get("/")
    assert resp.status_code == 200, explain(resp, flask_server)
    assert 'enctype="multipart/form-data"' in resp.text
    assert resp.headers["Content-Type"].startswith("text/html")


def test_multipart_file_upload(flask_server):
    """A multipart POST with a file and a text field: Flask sees the file name,
    its exact size and content, and the field."""
    data = bytes(range(256)) * 1200 + b"tail"  # ~300 KB, beyond nginx's memory buffer
    resp = flask_server.post("/upload", files={"upload": ("report.bin", data)},
                             data={"note": "hello from the test"})
    assert resp.status_code == 200, explain(resp, flask_server)
    assert resp.text.strip() == (f"filename=report.bin size={len(data)} "
                                 f"sha256={hashlib.sha256(data).hexdigest()} "
                                 "note=hello from the test")


def test_streamed_response_arrives_in_pieces(flask_server):
    """A stream_with_context generator: the first piece arrives while the
    generator still sleeps before the second one."""
    resp = flask_server.raw("GET", "/stream?who=tester")
    assert resp.status == 200, explain(resp, flask_server)
    assert resp.body == b"piece-1\npiece-2 for tester\n"
    first = resp.arrival_time(b"piece-1")
    second = resp.arrival_time(b"piece-2")
    assert second - first > 1.0, f"piece-1 at {first:.2f}s, piece-2 at {second:.2f}s"


def test_not_found(flask_server):
    """Flask's own 404 passes through unchanged."""
    resp = flask_server.get("/no/such/page")
    assert resp.status_code == 404
    assert "Not Found" in resp.text
