"""pytest wiring for the ngx-wsgi integration tests.

* ``flavor`` (session scope, parametrized by ``NGX_WSGI_FLAVORS``, default
  ``debian,vendored``): a flavour whose nginx binary or module .so is missing
  is skipped with the reason - or fails when ``NGX_WSGI_REQUIRE_ALL=1``.
* ``nginx_module_servers`` (module scope) / ``nginx_servers`` (function
  scope): factories that start an ``NginxServer`` in a temp prefix and stop it
  (SIGQUIT) at teardown, failing if the logs show alerts or crashes.
* ``checker``: an unstarted server for ``nginx -t`` checks (``harness.expect_emerg``).
* An autouse check after every test: no ``[alert]``, ``[crit]``, ``[emerg]``
  or ``exited on signal`` line may have appeared in the log of any running
  server during the test, unless the test is marked ``nginx_log_alerts_ok``.
"""

import os

import pytest

import harness
from harness import FLAVORS, LIVE_SERVERS, NginxServer, selected_flavor_names


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "nginx_log_alerts_ok: the test expects [alert]/[crit]/'exited on signal' log lines")


def pytest_report_header(config):
    lines = []
    for name in selected_flavor_names():
        flavor = FLAVORS.get(name)
        if flavor is None:
            lines.append(f"ngx-wsgi flavour {name}: UNKNOWN (known: {', '.join(FLAVORS)})")
        else:
            lines.append(f"ngx-wsgi flavour {name}: {flavor.nginx} + {flavor.module}: "
                         f"{flavor.missing() or 'present'}")
    return lines


@pytest.fixture(scope="session", params=selected_flavor_names())
def flavor(request):
    """The nginx binary + module pair under test (skipped when not built)."""
    name = request.param
    if name not in FLAVORS:
        pytest.fail(f"unknown flavour {name!r} in NGX_WSGI_FLAVORS (known: {', '.join(FLAVORS)})")
    chosen = FLAVORS[name]
    missing = chosen.missing()
    if missing:
        if os.environ.get("NGX_WSGI_REQUIRE_ALL") == "1":
            pytest.fail(f"flavour {name} is required (NGX_WSGI_REQUIRE_ALL=1) but: {missing}")
        pytest.skip(f"flavour {name} not built: {missing}")
    return chosen


class ServerPool:
    """Starts servers on demand and stops them all at teardown."""

    def __init__(self, flavor, make_dir):
        self.flavor = flavor
        self.make_dir = make_dir
        self.servers = []

    def __call__(self, http_conf, main_conf="", name="nginx", start=True, **kwargs):
        srv = NginxServer(self.flavor, self.make_dir(name), http_conf, main_conf, **kwargs)
        self.servers.append(srv)
        if start:
            srv.start()
        return srv

    def close(self):
        problems = []
        for srv in self.servers:
            try:
                srv.stop()
            except AssertionError as exc:
                problems.append(f"{srv}: {exc}")
            except Exception as exc:  # never leave nginx running behind
                srv.kill()
                problems.append(f"{srv}: {exc!r}")
        if problems:
            pytest.fail("nginx teardown problems:\n" + "\n".join(problems))


@pytest.fixture(scope="module")
def nginx_module_servers(flavor, tmp_path_factory):
    """Factory for servers shared by the tests of one test module."""
    pool = ServerPool(flavor, lambda name: tmp_path_factory.mktemp(f"{flavor.name}-{name}"))
    yield pool
    pool.close()


@pytest.fixture
def nginx_servers(flavor, tmp_path):
    """Factory for servers owned by a single test (e.g. ones the test reloads or stops)."""
    counter = iter(range(1000))
    pool = ServerPool(flavor, lambda name: tmp_path / f"{name}-{next(counter)}")
    yield pool
    pool.close()


@pytest.fixture
def checker(nginx_servers):
    """An unstarted NginxServer that only runs ``nginx -t`` (``harness.expect_emerg``,
    ``harness.expect_config_ok``, ``NginxServer.nginx_t``)."""
    return nginx_servers("", name="checker", start=False)


@pytest.fixture(autouse=True)
def _nginx_logs_stay_clean(request):
    """After each test: no alert/crit/emerg/crash lines in any running server's logs."""
    yield
    allow = request.node.get_closest_marker("nginx_log_alerts_ok") is not None
    for srv in list(LIVE_SERVERS):
        srv.check_log(allow=allow)


def pytest_sessionfinish(session, exitstatus):
    """Never leave an nginx behind, whatever happened."""
    for srv in list(harness.LIVE_SERVERS):
        srv.kill()


# --------------------------------------------------------------------------
# The shared conformance server
# --------------------------------------------------------------------------

CONFORMANCE_HTTP_CONF = """
    wsgi_python_path @PYLIB@;
    server {
        listen 127.0.0.1:@PORT@;
        server_name localhost;
        client_max_body_size 100m;

        # tests/apps/conformance.py wrapped in wsgiref.validate.validator
        location / {
            wsgi_app @APPS@/conformance.py;
        }
        # the same app without the validator
        location /raw/ {
            wsgi_app @APPS@/conformance.py:raw_application;
            wsgi_script_name /raw;
        }
        # an app that breaks the WSGI rules on purpose
        location /bad/ {
            wsgi_app @APPS@/misbehave.py;
            wsgi_script_name /bad;
        }
        location /small/ {
            client_max_body_size 1k;
            wsgi_app @APPS@/conformance.py;
            wsgi_script_name /small;
        }
    }
"""

# Anything wsgiref.validate complains about ends up in the logs: an AssertionError
# (none of the fixture apps raises one itself), a WSGIWarning, or its note about
# an iterable that was never closed.
VALIDATOR_COMPLAINTS = [r"AssertionError", r"WSGIWarning",
                        r"garbage collected without being closed"]


@pytest.fixture(scope="module")
def conformance_server(nginx_module_servers):
    """nginx serving tests/apps/conformance.py (validated at /, raw at /raw/) and
    tests/apps/misbehave.py at /bad/."""
    srv = nginx_module_servers(CONFORMANCE_HTTP_CONF, name="conformance")
    srv.forbidden_log_patterns = list(VALIDATOR_COMPLAINTS)
    return srv


@pytest.fixture(params=["validated", "raw"])
def mount(request):
    """URL prefix of the conformance app: '' (under the validator) or '/raw' (plain)."""
    return {"validated": "", "raw": "/raw"}[request.param]
