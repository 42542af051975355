"""Several applications in one server, mount points, module lookup and
``wsgi_python_home``.

One server holds: two script apps that are both named ``wsgi.py`` (copies of
tests/apps/twin.py in <prefix>/twins/a and twins/b), a ``wsgi_script_name /shop`` mount, an app
mounted at /, a dotted-module app found through ``wsgi_python_path``, an
app whose import fails, and a static-file location served by nginx itself.
A second server uses ``wsgi_python_home`` with a throw-away virtualenv.
"""

from pathlib import Path

import re

import pytest

from harness import Case, explain, install_twins, make_venv_with_module, run_cases

ROUTING_CONF = """
    wsgi_python_path @APPS@/pylib;
    server {
        listen 127.0.0.1:@PORT@;
        server_name localhost;

        location /a/ {
            wsgi_app @PREFIX@/twins/a/wsgi.py;
            wsgi_script_name /a;
        }
        location /b/ {
            wsgi_app @PREFIX@/twins/b/wsgi.py;
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
    install_twins(srv)
    return srv.start()


def test_two_scripts_named_wsgi_py_do_not_collide(routing_server):
    """/a/ and /b/ run twins/a/wsgi.py and twins/b/wsgi.py, each answering with
    its own identity, on every worker (several requests each)."""
    run_cases(routing_server, [
        Case("GET /a/",
             expect_body=re.compile(r"^twin-a file=\S*/twins/a/wsgi\.py script_name=/a$")),
        Case("GET /b/",
             expect_body=re.compile(r"^twin-b file=\S*/twins/b/wsgi\.py script_name=/b$")),
    ] * 6)


def mount(path, script_name, path_info):
    """A request to tests/apps/mountinfo.py and the environ split it must see."""
    return Case(f"GET {path}", expect_json={"SCRIPT_NAME": script_name, "PATH_INFO": path_info,
                                            "REQUEST_URI": path})


def test_script_name_mount(routing_server):
    """wsgi_script_name /shop: SCRIPT_NAME is '/shop' and PATH_INFO the rest of
    the decoded URI."""
    run_cases(routing_server, [
        mount("/shop/x", "/shop", "/x"),
        mount("/shop/", "/shop", "/"),
        mount("/shop", "/shop", ""),
        mount("/shop/cart/item%201", "/shop", "/cart/item 1"),
    ])


def test_root_mount(routing_server):
    """An app in location / without wsgi_script_name gets SCRIPT_NAME '' and the
    whole decoded path as PATH_INFO."""
    run_cases(routing_server, [mount("/some/where%21", "", "/some/where!")])


def test_dotted_module_app(routing_server):
    """wsgi_app ngxtest_dotted.web:app imports a package from wsgi_python_path
    and uses the named callable."""
    run_cases(routing_server, [
        Case("GET /dotted/", expect_body="dotted app from ngxtest_dotted.web"),
    ])


def test_static_location_still_served_by_nginx(routing_server):
    """A plain root location in the same server serves files as usual."""
    run_cases(routing_server, [
        Case("GET /static/hello.txt", expect_body=STATIC_TEXT,
             expect_headers={"Content-Type": "text/plain", "ETag": True, "Last-Modified": True}),
        Case("GET /static/nope.txt", expect_status=404),
    ])


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
