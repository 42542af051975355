"""nginx from inside: ``wsgi_param`` (nginx variables into the environ) and the module's
variables ($wsgi_status, $wsgi_app_time, $wsgi_queue_time, $wsgi_log_NAME) in log_format
and add_header, in threaded and inline modes."""

import base64
import re

import pytest

from harness import explain, expect_emerg, token, wait_until

MODES = {"threaded": "", "inline": "wsgi_threads 0;"}


def conf(mode):
    return f"""
    {MODES[mode]}
    log_format native '$request_uri $status app=$wsgi_status t=$wsgi_app_time q=$wsgi_queue_time user=$wsgi_log_user plan=$wsgi_log_plan';
    server {{
        listen 127.0.0.1:@PORT@;
        access_log @PREFIX@/logs/native.log native;
        add_header X-App-Status $wsgi_status always;
        wsgi_param S_PARAM server-level;
        location /p/ {{
            wsgi_app @APPS@/native.py;
            wsgi_param REMOTE_USER $remote_user;
            wsgi_param X_CUSTOM "v=$arg_v!";
            wsgi_param EMPTY $arg_none if_not_empty;
            wsgi_param REMOTE_ADDR 10.1.2.3;
            wsgi_param HTTPS on;
            wsgi_param HTTP_X_FORWARDED_FOR "set by nginx";
        }}
        location /inherit/ {{
            wsgi_app @APPS@/native.py;
        }}
        location / {{
            wsgi_app @APPS@/native.py;
        }}
    }}
"""


@pytest.fixture(scope="module", params=list(MODES))
def native(request, nginx_module_servers):
    return nginx_module_servers(conf(request.param), name=f"native-{request.param}")


def test_params_with_variables_override_module_keys(native):
    auth = base64.b64encode(b"ada:secret").decode()
    resp = native.get("/p/env?v=42", headers={"Authorization": f"Basic {auth}",
                                              "X-Forwarded-For": "forged"})
    assert resp.status_code == 200, explain(resp, native)
    env = resp.json()
    assert env["REMOTE_USER"] == "ada"
    assert env["X_CUSTOM"] == "v=42!"
    assert env["EMPTY"] is None, "if_not_empty must skip an empty value"
    assert env["REMOTE_ADDR"] == "10.1.2.3"
    assert env["HTTPS"] == "on" and env["wsgi.url_scheme"] == "https"
    assert env["HTTP_X_FORWARDED_FOR"] == "set by nginx", "a wsgi_param replaces the client's header"
    assert env["S_PARAM"] is None, "a level with its own wsgi_params does not inherit others"


def test_params_are_inherited_by_levels_without_their_own(native):
    env = native.get("/inherit/env").json()
    assert env["S_PARAM"] == "server-level"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"


def test_bad_params_fail_nginx_t(checker):
    expect_emerg(checker, 'location / { wsgi_app @APPS@/native.py; wsgi_param wsgi.input x; }',
                 '"wsgi_param" name', "the wsgi.* keys", at="wsgi_param")
    expect_emerg(checker, 'location / { wsgi_app @APPS@/native.py; wsgi_param A b if_empty; }',
                 'invalid "wsgi_param" parameter "if_empty"', at="wsgi_param")


def log_line(native, uri):
    path = native.prefix / "logs" / "native.log"

    def find():
        if not path.exists():
            return None
        for line in path.read_text().splitlines():
            if line.startswith(uri + " "):
                return line
        return None

    return wait_until(find, 10, what=f"the access log line of {uri}")


def test_log_variables_from_the_application(native):
    tok = token()
    resp = native.get(f"/logvars?user=ada&t={tok}")
    assert resp.status_code == 200, explain(resp, native)
    line = log_line(native, f"/logvars?user=ada&t={tok}")
    assert " user=ada plan=42" in line, line


def test_app_time_queue_time_and_status(native):
    tok = token()
    resp = native.get(f"/sleep?ms=120&t={tok}")
    assert resp.headers["X-App-Status"] == "200"
    line = log_line(native, f"/sleep?ms=120&t={tok}")
    m = re.search(r" 200 app=200 t=(\d+\.\d{3}) q=(\d+\.\d{3}) user=- plan=-$", line)
    assert m, line
    assert 0.12 <= float(m.group(1)) < 10, line
    assert float(m.group(2)) < 10, line


def test_status_variable_is_the_applications(native):
    tok = token()
    resp = native.get(f"/status?code=418&t={tok}")
    assert resp.status_code == 418 and resp.headers["X-App-Status"] == "418"
    line = log_line(native, f"/status?code=418&t={tok}")
    assert " 418 app=418 " in line, line


def test_logging_goes_to_the_error_log_with_levels_and_request_context(native):
    """Without any logging configuration, records reach nginx's error log at their level
    (filtered by error_log, here info: no debug), with the request's context, and
    logger.exception with its traceback."""
    tok = token()
    mark = native.log_mark()
    assert native.get(f"/log?token={tok}").status_code == 200
    ctx = r", client: 127\.0\.0\.1, server: \S*, request: \"GET /log\?token=" + tok
    for level, what in (("info", "info"), ("warn", "warning"), ("error", "error")):
        native.wait_log(re.compile(rf"\[{level}\] \d+#\d+: \*\d+ native: {what}-{tok}{ctx}"), since=mark)
    text = native.wait_log(re.compile(rf"\[error\] .*native: exception-{tok}\nTraceback"), since=mark)
    assert f"ValueError: boom-{tok}" in text
    assert f"debug-{tok}" not in native.log_since(mark)


@pytest.mark.nginx_log_alerts_ok
def test_logging_critical_is_crit(native):
    tok = token()
    mark = native.log_mark()
    assert native.get(f"/log?token={tok}&crit=1").status_code == 200
    native.wait_log(re.compile(rf"\[crit\] .*native: critical-{tok}"), since=mark)
