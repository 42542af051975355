"""X-Accel-Redirect and friends, wsgi_ignore_headers, wsgi_intercept_errors: the module
uses nginx as proxied and uwsgi upstreams do, in threaded and inline modes."""

import time

import pytest

from harness import explain, expect_emerg, token, wait_until

MODES = {"threaded": "", "inline": "wsgi_threads 0;"}


def conf(mode):
    return f"""
    {MODES[mode]}
    wsgi_python_home @VENV@;
    wsgi_python_path @PYLIB@;
    log_format accel '$request_uri $status app=$wsgi_status';
    server {{
        listen 127.0.0.1:@PORT@;
        access_log @PREFIX@/logs/accel.log accel;
        location /internal/ {{
            internal;
            alias @PREFIX@/html/protected/;
        }}
        location @fallback {{
            return 200 "named location\\n";
        }}
        location / {{
            wsgi_app @APPS@/accel.py;
        }}
        location /ignoring/ {{
            wsgi_app @APPS@/accel.py;
            wsgi_script_name /ignoring;
            wsgi_ignore_headers X-Accel-Redirect;
        }}
        location /intercept/ {{
            wsgi_app @APPS@/accel.py;
            wsgi_script_name /intercept;
            wsgi_intercept_errors on;
            error_page 404 /errors/404.html;
            error_page 401 /errors/401.html;
        }}
        location /no-intercept/ {{
            wsgi_app @APPS@/accel.py;
            wsgi_script_name /no-intercept;
            error_page 404 /errors/404.html;
        }}
        location /errors/ {{
            root @PREFIX@/html;
        }}
        location /flask/ {{
            wsgi_app @APPS@/accel_frameworks.py:flask_app;
            wsgi_script_name /flask;
        }}
        location /django/ {{
            wsgi_app @APPS@/accel_frameworks.py:django_app;
            wsgi_script_name /django;
        }}
    }}
"""

SECRET = b"".join(b"secret line %05d\n" % i for i in range(3000))


@pytest.fixture(scope="module", params=list(MODES))
def accel(request, nginx_module_servers):
    srv = nginx_module_servers(conf(request.param), name=f"accel-{request.param}", start=False)
    protected = srv.prefix / "html" / "protected"
    protected.mkdir(parents=True)
    (protected / "report.pdf").write_bytes(SECRET)
    (protected / "big.bin").write_bytes(b"b" * 300_000)
    errors = srv.prefix / "html" / "errors"
    errors.mkdir(parents=True)
    (errors / "404.html").write_text("nginx's own 404 page\n")
    (errors / "401.html").write_text("nginx's own 401 page\n")
    srv.start()
    return srv


def test_x_accel_redirect_serves_the_internal_file(accel):
    tok = token()
    resp = accel.get(f"/dl/report.pdf?token={tok}")
    assert resp.status_code == 200, explain(resp, accel)
    assert resp.content == SECRET
    assert resp.headers["Content-Type"] == "application/x-protected"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="report.pdf"'
    assert "X-Accel-Redirect" not in resp.headers and "X-App-Only" not in resp.headers
    closed = accel.state_dir / f"{tok}.closed"
    wait_until(closed.exists, 5, what="the iterable's close()")


def test_x_accel_redirect_keeps_head_and_range(accel):
    resp = accel.raw("HEAD", "/dl/report.pdf")
    assert resp.status == 200 and resp.raw_body == b""
    assert resp.header("Content-Length") == str(len(SECRET))
    resp = accel.get("/dl/report.pdf", headers={"Range": "bytes=0-9"})
    assert resp.status_code == 206 and resp.content == SECRET[:10]


def test_x_accel_redirect_to_a_missing_file_is_nginx_404(accel):
    resp = accel.get("/dl/missing.pdf")
    assert resp.status_code == 404 and b"application's body" not in resp.content


def test_x_accel_redirect_to_a_named_location(accel):
    resp = accel.get("/named")
    assert resp.status_code == 200 and resp.text == "named location\n"


def test_x_accel_limit_rate(accel):
    t0 = time.monotonic()
    resp = accel.get("/limited")
    took = time.monotonic() - t0
    assert resp.status_code == 200 and len(resp.content) == 300_000
    # 300 000 bytes at 100 KiB/s, nginx allowing up to two seconds' worth at once.
    assert took > 0.7, f"X-Accel-Limit-Rate not applied: {took:.2f}s"


def test_wsgi_ignore_headers_turns_the_redirect_off(accel):
    resp = accel.get("/ignoring/dl/report.pdf")
    assert resp.status_code == 200
    assert resp.content == b"the application's body must not reach the client"
    assert "X-Accel-Redirect" not in resp.headers


@pytest.mark.parametrize("framework", ["flask", "django"])
def test_framework_protected_download_recipes(accel, framework):
    resp = accel.get(f"/{framework}/report.pdf")
    assert resp.status_code == 200, explain(resp, accel)
    assert resp.content == SECRET
    assert resp.headers["Content-Disposition"] == 'attachment; filename="report.pdf"'


def test_intercept_errors_uses_error_page(accel):
    resp = accel.get("/intercept/status?code=404")
    assert resp.status_code == 404 and resp.text == "nginx's own 404 page\n", explain(resp, accel)
    resp = accel.get("/intercept/status?code=401")
    assert resp.status_code == 401 and resp.text == "nginx's own 401 page\n"
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="app"'
    # No error_page for 403: the application's own page passes.
    resp = accel.get("/intercept/status?code=403")
    assert resp.status_code == 403 and resp.text == "the application's own 403 page"


def test_without_intercept_the_application_page_passes(accel):
    resp = accel.get("/no-intercept/status?code=404")
    assert resp.status_code == 404 and resp.text == "the application's own 404 page"


def test_wsgi_status_survives_the_error_page(accel):
    tok = token()
    accel.get(f"/intercept/status?code=404&t={tok}")
    path = accel.prefix / "logs" / "accel.log"

    def line():
        for entry in path.read_text().splitlines() if path.exists() else []:
            if f"t={tok}" in entry:
                return entry
        return None

    entry = wait_until(line, 10, what="the access log line")
    assert entry.endswith(" 404 app=404"), entry


def test_bad_ignore_headers_fail_nginx_t(checker):
    expect_emerg(checker, "location / { wsgi_app @APPS@/accel.py; wsgi_ignore_headers Set-Cookie; }",
                 'invalid "wsgi_ignore_headers" value "Set-Cookie"', at="wsgi_ignore_headers")
