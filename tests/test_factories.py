"""Application factories (``wsgi_app pkg.mod:create_app("production")``) and the
virtualenv/embedded Python version check of ``wsgi_python_home``."""

import re

import pytest

from harness import APPS_DIR, expect_emerg, explain

FACTORY_DIR = APPS_DIR / "factory"


def factory_conf(extra_locations=""):
    return f"""
    wsgi_python_path {FACTORY_DIR};
    server {{
        listen 127.0.0.1:@PORT@;
        location /plain/ {{ wsgi_app factory_app:create_app(); }}
        location /prod/ {{ wsgi_app 'factory_app:create_app("production", debug=True, ratio=-2.5e-1)'; }}
        {extra_locations}
    }}
"""


@pytest.fixture(params=["threaded", "inline"])
def mode(request):
    return "" if request.param == "threaded" else "wsgi_threads 0;"


def test_factory_called_once_per_worker_with_literal_arguments(nginx_servers, mode):
    srv = nginx_servers(mode + factory_conf(), name="factory")
    seen = {}
    for _ in range(20):
        resp = srv.get("/prod/")
        assert resp.status_code == 200, explain(resp, srv)
        fields = dict(kv.split("=", 1) for kv in resp.text.split())
        assert (fields["env"], fields["debug"], fields["ratio"]) == ("production", "True", "-0.25")
        seen[fields["pid"]] = fields["calls"]
    # Two locations, one factory each: every worker called create_app once per location.
    assert set(seen.values()) <= {"1", "2"}, seen
    resp = srv.get("/plain/")
    assert resp.status_code == 200 and "env=development debug=False" in resp.text, explain(resp, srv)


def test_factory_returning_no_app_is_a_500_with_a_reason(nginx_servers):
    srv = nginx_servers(factory_conf("location /bad/ { wsgi_app factory_app:not_an_app(); }"),
                        name="factory-bad")
    mark = srv.log_mark()
    resp = srv.get("/bad/")
    assert resp.status_code == 500
    srv.wait_log(re.compile(r"not_an_app\(\) returned int, not a WSGI callable"), since=mark)
    assert srv.get("/plain/").status_code == 200


@pytest.mark.parametrize("spec, why", [
    ("factory_app:create_app(os.system('id'))", "only literals"),
    ("factory_app:create_app('x'", "must end with"),
    ("factory_app:create_app(debug=True, 'x')", "positional argument after keyword"),
    ("factory_app:create_app('unterminated)", "unterminated string"),
])
def test_bad_factory_syntax_fails_nginx_t(checker, spec, why):
    expect_emerg(checker, factory_conf(f'location /x/ {{ wsgi_app "{spec}"; }}'),
                 why, "wsgi_app", at="location /x/")


def test_venv_of_another_python_fails_nginx_t(checker, tmp_path):
    """A wsgi_python_home virtualenv made from another Python version is refused with one
    [emerg] naming both versions (not a crash or an import error at worker start)."""
    venv = tmp_path / "venv-other"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /opt/python/bin\ninclude-system-site-packages = false\n"
                                     "version = 3.99.1\n")
    emerg = expect_emerg(checker, factory_conf(), "Python 3.99",
                         re.compile(r"embeds Python 3\.\d+"), "wsgi_python_home",
                         http=f"wsgi_python_home {venv};",
                         at=f"wsgi_python_home {venv};")
    # One message (nginx prints it on the terminal and in the startup log).
    assert len({line[line.index('"wsgi_python_home"'):] for line in emerg}) == 1, emerg
