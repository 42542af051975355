"""Several applications in one server, mount points, module lookup and
``wsgi_python_home``.

One server holds: two script apps that are both named ``wsgi.py`` (in
tests/apps/site_a and site_b), a ``wsgi_script_name /shop`` mount, an app
mounted at /, a dotted-module app found through ``wsgi_python_path``, an
app whose import fails, and a static-file location served by nginx itself.
A second server uses ``wsgi_python_home`` with a throw-away virtualenv.
"""

from pathlib import Path

import pytest

from harness import explain, make_venv_with_module

ROUTING_CONF = """
    wsgi_python_path @APPS@/pylib;
    server {
        listen 127.0.0.1:@PORT@;
        server_name localhost;

        location /a/ {
            wsgi_app @APPS@/site_a/wsgi.py;
            wsgi_script_name /a;
        }
        location /b/ {
            wsgi_app @APPS@/site_b/wsgi.py;
            wsgi_script_name /b;
        }
        location /shop {
            wsgi_app @APPS@/mountinfo.py;
            wsgi_script_name /shop;
        }
        location / {
            wsgi_app @APPS@/mountinfo.py;
        }
        location /dotted/ {
            wsgi_app ngxtest_dotted.web:app;
        }
        location /broken/ {
            wsgi_app @APPS@/broken_import.py;
        }
        location /static/ {
            root @PREFIX@/html;
        }
    }
"""

STATIC_TEXT = "served by nginx, not by Python\n"


@pytest.fixture(scope="module")
def routing_server(nginx_module_servers):
    srv = nginx_module_servers(ROUTING_CONF, name="routing", start=False)
    (srv.prefix / "html" / "static").mkdir(parents=True)
    (srv.prefix / "html" / "static" / "hello.txt").write_text(STATIC_TEXT)
    return srv.start()


def test_two_scripts_named_wsgi_py_do_not_collide(routing_server):
    """/a/ and /b/ run site_a/wsgi.py and site_b/wsgi.py, each answering with
    its own identity, on every worker (several requests each)."""
    for _ in range(6):
        a = routing_server.get("/a/")
        b = routing_server.get("/b/")
        assert a.status_code == 200, explain(a, routing_server)
        assert b.status_code == 200, explain(b, routing_server)
        assert a.text.startswith("site-a ") and "site_a/wsgi.py" in a.text, a.text
        assert b.text.startswith("site-b ") and "site_b/wsgi.py" in b.text, b.text


@pytest.mark.parametrize("path,script_name,path_info", [
    ("/shop/x", "/shop", "/x"),
    ("/shop/", "/shop", "/"),
    ("/shop", "/shop", ""),
    ("/shop/cart/item%201", "/shop", "/cart/item 1"),
])
def test_script_name_mount(routing_server, path, script_name, path_info):
    """wsgi_script_name /shop: SCRIPT_NAME is '/shop' and PATH_INFO the rest of
    the decoded URI."""
    resp = routing_server.get(path)
    assert resp.status_code == 200, explain(resp, routing_server)
    info = resp.json()
    assert (info["SCRIPT_NAME"], info["PATH_INFO"]) == (script_name, path_info)
    assert info["REQUEST_URI"] == path


def test_root_mount(routing_server):
    """An app in location / without wsgi_script_name gets SCRIPT_NAME '' and the
    whole decoded path as PATH_INFO."""
    resp = routing_server.get("/some/where%21")
    assert resp.status_code == 200, explain(resp, routing_server)
    info = resp.json()
    assert (info["SCRIPT_NAME"], info["PATH_INFO"]) == ("", "/some/where!")


def test_dotted_module_app(routing_server):
    """wsgi_app ngxtest_dotted.web:app imports a package from wsgi_python_path
    and uses the named callable."""
    resp = routing_server.get("/dotted/")
    assert resp.status_code == 200, explain(resp, routing_server)
    assert resp.text == "dotted app from ngxtest_dotted.web"


def test_static_location_still_served_by_nginx(routing_server):
    """A plain root location in the same server serves files as usual."""
    resp = routing_server.get("/static/hello.txt")
    assert resp.status_code == 200, explain(resp, routing_server)
    assert resp.text == STATIC_TEXT
    assert resp.headers["Content-Type"] == "text/plain"
    assert "ETag" in resp.headers and "Last-Modified" in resp.headers
    missing = routing_server.get("/static/nope.txt")
    assert missing.status_code == 404


def test_app_that_fails_to_import(routing_server):
    """An app whose import raises answers 500, its traceback is in error.log,
    and the other apps of the server are unaffected."""
    resp = routing_server.get("/broken/")
    assert resp.status_code == 500, explain(resp, routing_server)
    assert "ngxtest-broken-import" not in resp.text
    log = routing_server.error_log()
    assert "Traceback" in log
    assert "ngxtest-broken-import: this module refuses to load" in log
    ok = routing_server.get("/a/")
    assert ok.status_code == 200, explain(ok, routing_server)


VENV_MODULE = 'MARKER = "only-in-the-test-venv"\n'


@pytest.fixture(scope="module")
def venv_server(nginx_module_servers, tmp_path_factory, flavor):
    venv = tmp_path_factory.mktemp("venv") / "env"
    make_venv_with_module(venv, "ngxtest_venv_only", VENV_MODULE, flavor)
    conf = f"""
    wsgi_python_home {venv};
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            wsgi_app @APPS@/venv_probe.py;
        }}
    }}
    """
    srv = nginx_module_servers(conf, name="venv")
    srv.venv = venv
    return srv


def test_python_home_virtualenv(venv_server):
    """With wsgi_python_home pointing at a virtualenv, a module installed only
    in that virtualenv's site-packages is importable by the app."""
    resp = venv_server.get("/")
    assert resp.status_code == 200, explain(resp, venv_server)
    info = resp.json()
    assert info["marker"] == "only-in-the-test-venv"
    assert Path(info["file"]).resolve().is_relative_to(venv_server.venv.resolve()), info["file"]
