"""Configuration checking with ``nginx -t``.

A good configuration passes; each bad one fails with an ``[emerg]`` line that
names the directive and points at the offending file and line
(``harness.expect_emerg``; ``checker`` is an unstarted server from conftest).
"""

from harness import expect_config_ok, expect_emerg


def test_good_config_passes(checker):
    """A config using every directive of the module passes ``nginx -t``."""
    expect_config_ok(checker, http="""
    wsgi_python_home @VENV@;
    wsgi_python_path @APPS@/pylib;
    wsgi_python_path @PYLIB@;
""", config="""
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            wsgi_app @APPS@/conformance.py;
            wsgi_script_name /app;
        }
    }
    server {
        listen 127.0.0.1:@PORT@;
        server_name second;
        location /dotted/ { wsgi_app ngxtest_dotted.web:app; }
        location /raw/ { wsgi_app @APPS@/conformance.py:raw_application; }
    }
""")


def test_wsgi_app_without_arguments(checker):
    """``wsgi_app;`` is rejected by nginx's own argument-count check."""
    expect_emerg(checker, "location / { wsgi_app; }",
                 'invalid number of arguments in "wsgi_app" directive', at="wsgi_app;")


def test_wsgi_app_with_missing_script(checker):
    """A script path that does not exist fails the config test, naming the
    directive and the path."""
    expect_emerg(checker, "location / { wsgi_app /nonexistent/x.py; }",
                 "wsgi_app", "/nonexistent/x.py", at="wsgi_app /nonexistent/x.py;")


def test_python_home_not_allowed_in_location(checker):
    """wsgi_python_home belongs to the http block only."""
    expect_emerg(checker, "location / { wsgi_python_home /tmp; }",
                 '"wsgi_python_home" directive is not allowed here', at="wsgi_python_home /tmp;")


def test_wsgi_app_not_allowed_in_http_block(checker):
    """wsgi_app is a location directive; at http level it is refused."""
    expect_emerg(checker, "location / { return 204; }",
                 '"wsgi_app" directive is not allowed here',
                 http="wsgi_app @APPS@/conformance.py;", at="wsgi_app ")
