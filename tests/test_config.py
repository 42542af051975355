"""Configuration checking with ``nginx -t``.

A good configuration passes; each bad one fails with an ``[emerg]`` line that
names the directive and points at the offending file and line.
"""

import pytest

from harness import find_line


@pytest.fixture
def checker(nginx_servers):
    """An (unstarted) NginxServer used only to run ``nginx -t``."""
    return nginx_servers("", name="config", start=False)


def server_block(location_body, http_extra=""):
    return f"""
    {http_extra}
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            {location_body}
        }}
    }}
"""


def emerg_lines(output):
    return [line for line in output.splitlines() if "[emerg]" in line]


def test_good_config_passes(checker):
    """A config using every directive of the module passes ``nginx -t``."""
    conf = server_block("wsgi_app @APPS@/conformance.py;\n            wsgi_script_name /app;",
                        http_extra="wsgi_python_home @VENV@;\n    "
                                   "wsgi_python_path @APPS@/pylib;\n    "
                                   "wsgi_python_path @PYLIB@;")
    conf += """
    server {
        listen 127.0.0.1:@PORT@;
        server_name second;
        location /dotted/ { wsgi_app ngxtest_dotted.web:app; }
        location /a/ { wsgi_app @APPS@/site_a/wsgi.py:application; }
    }
"""
    rc, output = checker.nginx_t(conf)
    assert rc == 0, output
    assert "syntax is ok" in output and "test is successful" in output, output
    assert not emerg_lines(output), output


def assert_emerg(checker, name, output, rc, *needles, line_of):
    """rc != 0 and an [emerg] line with all ``needles`` and '<conf>:<line>'."""
    conf = checker.prefix / "conf" / name
    where = f"{conf}:{find_line(conf, line_of)}"
    assert rc != 0, output
    lines = emerg_lines(output)
    assert lines, f"no [emerg] line in:\n{output}"
    matching = [line for line in lines if all(n in line for n in needles) and where in line]
    assert matching, f"no [emerg] line containing {needles} and {where!r}:\n{output}"


def test_wsgi_app_without_arguments(checker):
    """``wsgi_app;`` is rejected by nginx's own argument-count check."""
    rc, output = checker.nginx_t(server_block("wsgi_app;"), name="noargs.conf")
    assert_emerg(checker, "noargs.conf", output, rc,
                 'invalid number of arguments in "wsgi_app" directive', line_of="wsgi_app;")


def test_wsgi_app_with_missing_script(checker):
    """A script path that does not exist fails the config test, naming the
    directive and the path."""
    rc, output = checker.nginx_t(server_block("wsgi_app /nonexistent/x.py;"),
                                 name="missing.conf")
    assert_emerg(checker, "missing.conf", output, rc, "wsgi_app", "/nonexistent/x.py",
                 line_of="wsgi_app /nonexistent/x.py;")


def test_python_home_not_allowed_in_location(checker):
    """wsgi_python_home belongs to the http block only."""
    rc, output = checker.nginx_t(server_block("wsgi_python_home /tmp;"), name="home.conf")
    assert_emerg(checker, "home.conf", output, rc,
                 '"wsgi_python_home" directive is not allowed here',
                 line_of="wsgi_python_home /tmp;")


def test_wsgi_app_not_allowed_in_http_block(checker):
    """wsgi_app is a location directive; at http level it is refused."""
    conf = "    wsgi_app @APPS@/conformance.py;\n" + server_block("return 204;")
    rc, output = checker.nginx_t(conf, name="apphttp.conf")
    assert_emerg(checker, "apphttp.conf", output, rc,
                 '"wsgi_app" directive is not allowed here', line_of="wsgi_app ")

