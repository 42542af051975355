"""Regression tests for hardening fixes: wsgi.input shared by two threads,
chunked request bodies, sys.stdout/sys.stderr as text streams, start_response
and write() outliving their request, response framing headers, response header
limits (``wsgi_max_header_size``), underscores in request headers, write()
inside close(), mount points, a failed first import, helper processes
(cache manager/loader) and conditional request headers.

The app is tests/apps/hardening.py (routes listed in its docstring). Most tests
share one server per (flavour, mode) with a single worker process: ``mode`` is
``threaded`` (the default thread pool) or ``inline`` (``wsgi_threads 0;``).
Tests that need their own configuration, or whose failure could wedge the
worker, start their own server. Timing bounds appear only where the behaviour
is about time, and are wide.
"""

import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time

import pytest

from harness import (RawResponse, build_request, children_of, expect_config_ok, expect_emerg,
                     explain, proc_status_kb, token, wait_until)

MODES = {"threaded": "", "inline": "wsgi_threads 0;"}

# Lines that must never appear in the log of a hardening server.
PANIC_PATTERNS = [r"panicked", r"PanicException", r"is unsendable"]


def hardening_conf(mode_directive, server_extra="", extra_locations="", timeout="20s"):
    return f"""
    wsgi_python_path @PYLIB@;
    {mode_directive}
    server {{
        listen 127.0.0.1:@PORT@;
        underscores_in_headers on;
        client_max_body_size 10m;
        wsgi_timeout {timeout};
        {server_extra}
        location / {{
            wsgi_app @APPS@/hardening.py;
        }}
        location /shop {{
            wsgi_app @APPS@/mountinfo.py;
            wsgi_script_name /shop;
        }}
        location = /wsgi-status {{ wsgi_status; }}
        location = /ok {{ return 200 "ok\\n"; }}
        {extra_locations}
    }}
"""


@pytest.fixture(scope="module", params=list(MODES))
def mode(request):
    """``threaded`` (default thread pool) or ``inline`` (``wsgi_threads 0``)."""
    return request.param


@pytest.fixture(scope="module")
def srv(nginx_module_servers, mode):
    server = nginx_module_servers(hardening_conf(MODES[mode]), name=f"hardening-{mode}",
                                  worker_processes=1)
    server.forbidden_log_patterns = list(PANIC_PATTERNS)
    return server


def state_text(server, name):
    try:
        return (server.state_dir / name).read_text()
    except FileNotFoundError:
        return None


def only_worker(server):
    workers = server.worker_pids()
    assert len(workers) == 1, workers
    return next(iter(workers))


def get_json(server, path, **kwargs):
    resp = server.get(path, **kwargs)
    assert resp.status_code == 200, explain(resp, server)
    return resp.json()


def raw_json(server, method, path, headers=(), body=b""):
    resp = server.raw(method, path, headers=headers, body=body)
    assert resp.status == 200, explain(resp, server)
    return json.loads(resp.body)


# --------------------------------------------------------------------------
# keep-alive: one response, then a second request on the same connection
# --------------------------------------------------------------------------

def _chunked_end(data, start):
    """Index just past the end of a chunked body beginning at ``start``, or None."""
    pos = start
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(data[pos:eol].split(b";")[0].strip(), 16)
        except ValueError:
            raise AssertionError(f"bad chunk size line {data[pos:eol][:100]!r}")
        if size == 0:
            # trailers (none expected), then the empty line
            end = data.find(b"\r\n\r\n", eol)
            if data[eol:eol + 4] == b"\r\n\r\n":
                return eol + 4
            return None if end < 0 else end + 4
        pos = eol + 2 + size + 2
        if pos > len(data):
            return None


def _response_end(data, method):
    """Where the first response in ``data`` ends by its own framing, or None if
    it is not complete yet (or is delimited by the connection close)."""
    sep = data.find(b"\r\n\r\n")
    if sep < 0:
        return None
    head = RawResponse(data[:sep + 4], [])
    start = sep + 4
    if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return start
    if head.chunked:
        return _chunked_end(data, start)
    length = head.header("Content-Length")
    if length is not None:
        end = start + int(length)
        return end if len(data) >= end else None
    return None


def keepalive_pair(server, method, path, headers=(), timeout=30):
    """Send ``method path`` on a keep-alive connection, read that response by its
    framing, then send ``GET /ok`` (Connection: close) on the same connection and
    read to EOF. Returns (first RawResponse, second RawResponse). Any byte the
    first response sent beyond its framing shows up in front of the second."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(build_request(method, path, list(headers), close=False))
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            end = _response_end(data, method)
            if end is not None:
                break
            assert time.monotonic() < deadline, f"first response incomplete: {data[:500]!r}"
            more = sock.recv(65536)
            assert more, f"connection closed during/after the first response: {data[:500]!r}"
            data += more
        sock.sendall(build_request("GET", "/ok"))
        while True:
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            data += more
    first = RawResponse(data[:end], [])
    rest = data[end:]
    assert rest.startswith(b"HTTP/1.1 200 "), (
        f"the next response on the connection does not start where the first ended "
        f"(first: {first.status_line!r}); bytes after the first response: {rest[:300]!r}")
    second = RawResponse(rest, [])
    assert second.body == b"ok\n", second.raw[:300]
    return first, second


def header_count(resp, name):
    return sum(1 for n, _ in resp.headers if n.lower() == name.lower())


# --------------------------------------------------------------------------
# 3. two threads reading the same wsgi.input
# --------------------------------------------------------------------------

def test_two_threads_reading_input_do_not_deadlock(nginx_servers):
    """Threaded mode only (the app needs a second Python thread beside the request's
    pool thread). With ``client_body_buffer_size 1k`` a 2 MB body is spooled to a
    temp file; the app reads wsgi.input (1 KiB at a time) from the request thread and
    from a thread it started, at the same time. Each of three such requests completes
    with 200, the two readers together got exactly the body, and the worker (the only
    one) keeps serving."""
    server = nginx_servers(hardening_conf("", server_extra="client_body_buffer_size 1k;",
                                          timeout="5s"),
                           name="input-race", worker_processes=1)
    server.forbidden_log_patterns = list(PANIC_PATTERNS)
    worker = only_worker(server)
    size = 2 * 1024 * 1024
    for _ in range(3):  # the two readers collide on most attempts; three make it certain
        resp = server.raw("POST", "/input-race", body=b"r" * size, timeout=30)
        assert resp.status == 200, explain(resp, server)
        got = json.loads(resp.body)
        assert not got.get("thread_alive"), got
        assert "request_error" not in got and "thread_error" not in got, got
        assert got["request"] + got["thread"] == size, got
    for _ in range(3):
        after = server.raw("GET", "/environ", timeout=15)
        assert after.status == 200, explain(after, server)
    assert server.worker_pids() == {worker}


# --------------------------------------------------------------------------
# 5. chunked request bodies arrive de-chunked
# --------------------------------------------------------------------------

def _chunked(pieces):
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize("pieces", [
    [b"hello", b" world"],
    [bytes([i % 251]) * 4096 for i in range(25)],  # 100 KiB: spooled to a temp file
], ids=["small", "100k"])
def test_chunked_request_body_is_dechunked(srv, pieces):
    """A ``Transfer-Encoding: chunked`` request body reaches the app decoded by
    nginx: no HTTP_TRANSFER_ENCODING in the environ, CONTENT_LENGTH is the decoded
    length and wsgi.input gives exactly the decoded bytes."""
    payload = b"".join(pieces)
    env = raw_json(srv, "POST", "/environ",
                   headers=[("Transfer-Encoding", "chunked"),
                            ("Content-Type", "application/octet-stream")],
                   body=_chunked(pieces))
    assert "HTTP_TRANSFER_ENCODING" not in env, env.get("HTTP_TRANSFER_ENCODING")
    assert env.get("CONTENT_LENGTH") == str(len(payload)), env.get("CONTENT_LENGTH")
    assert env["body_len"] == len(payload)
    assert env["body_sha256"] == hashlib.sha256(payload).hexdigest()


def test_plain_request_has_no_transfer_encoding(srv):
    env = raw_json(srv, "POST", "/environ", body=b"abc")
    assert "HTTP_TRANSFER_ENCODING" not in env
    assert env["CONTENT_LENGTH"] == "3" and env["body_len"] == 3


# --------------------------------------------------------------------------
# 6. sys.stdout / sys.stderr are text streams with a binary buffer
# --------------------------------------------------------------------------

def test_stdout_and_stderr_are_text_streams(srv):
    """sys.stdout and sys.stderr behave like io.TextIOWrapper: ``.buffer`` (whose
    write(bytes) lands in error.log), ``.encoding``, ``.errors``, ``fileno()`` an
    int, ``isatty()`` False, ``flush()``, ``writelines()``. print(), .write(),
    .writelines(), .buffer.write() and an io.TextIOWrapper made around
    sys.stdout.buffer at import time (as mercurial does) all reach error.log."""
    tok = token()
    mark = srv.log_mark()
    report = get_json(srv, f"/stdio?token={tok}")
    assert report["wrap_error"] is None, report
    for name in ("stdout", "stderr"):
        info = report[name]
        assert info["has_buffer"] is True, (name, info)
        assert isinstance(info["encoding"], str) and info["encoding"], (name, info)
        assert isinstance(info["errors"], str) and info["errors"], (name, info)
        assert "ok" in info["fileno"] and isinstance(info["fileno"]["ok"], int) \
            and not isinstance(info["fileno"]["ok"], bool), (name, info)
        assert info["isatty"] == {"ok": False}, (name, info)
        assert info["flush"] == {"ok": None}, (name, info)
        assert info["writelines"] == {"ok": None}, (name, info)
        expected_len = len(f"marker-buffer-{name}-{tok}\n")
        assert info["buffer_write"] == {"ok": expected_len}, (name, info)
        assert info["buffer_flush"] == {"ok": None}, (name, info)
    assert report["wrapped_write"] == {"ok": len(f"marker-wrapped-{tok}\n")}, report

    for marker in (f"marker-stdout-{tok}", f"marker-stderr-{tok}",
                   f"marker-buffer-stdout-{tok}", f"marker-buffer-stderr-{tok}",
                   f"marker-writelines-stdout-{tok}", f"marker-writelines-stderr-{tok}",
                   f"marker-wrapped-{tok}"):
        srv.wait_log(marker, since=mark)


def test_lines_from_application_threads_get_nginx_prefix(srv):
    """Finding 12: a thread the application starts (in both modes) writes through
    nginx's logger on the event loop, so its lines carry nginx's time, level and pid
    prefix (raw writes to fd 2 from that thread would not)."""
    tok = token()
    mark = srv.log_mark()
    resp = srv.get(f"/thread-log?token={tok}")
    assert resp.status_code == 200, explain(resp, srv)
    prefix = r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[%s\] \d+#\d+: "
    srv.wait_log(re.compile(prefix % "error" + f"marker-thread-stderr-{tok}$", re.M), since=mark)
    srv.wait_log(re.compile(prefix % "info" + f"marker-thread-stdout-{tok}$", re.M), since=mark)


# --------------------------------------------------------------------------
# 7. start_response / write() outliving the request
# --------------------------------------------------------------------------

def test_collected_cycles_never_complain(srv):
    """start_response and write() kept in a reference cycle, collected by
    gc.collect() on another thread (same request, then a later one): no
    "is unsendable, but is being dropped on another thread", no panic."""
    mark = srv.log_mark()
    for _ in range(5):
        resp = srv.get("/cycle")
        assert resp.status_code == 200 and resp.content == b"ok", explain(resp, srv)
    tok = token()
    resp = srv.get(f"/cycle?gc=1&token={tok}")
    assert resp.status_code == 200, explain(resp, srv)
    text = srv.wait_log(f"gc-done-{tok}", since=mark)
    bad = [line for line in text.splitlines()
           if any(re.search(p, line) for p in PANIC_PATTERNS)]
    assert not bad, "\n".join(bad[:10])


def test_cycles_do_not_leak(srv):
    """4000 requests that each leave start_response and write() in a reference
    cycle (collected by gc.collect() on another thread every 50 requests): after a
    warm-up of 500, the worker's RSS grows by less than 2 MB (the leak was ~0.9 KB
    per request)."""
    worker = only_worker(srv)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)

    def run(n):
        for i in range(n):
            path = "/cycle?gc=1" if i % 50 == 49 else "/cycle"
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert (resp.status, body) == (200, b"ok"), (resp.status, body[:200])
        conn.request("GET", "/cycle?gc=1")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"ok"

    mark = srv.log_mark()
    try:
        run(500)
        base = proc_status_kb(worker, "VmRSS")
        run(4000)
        grown = proc_status_kb(worker, "VmRSS") - base
    finally:
        conn.close()
    assert srv.worker_pids() == {worker}
    assert grown < 2048, f"worker RSS grew by {grown} kB over 4000 requests"
    bad = [line for line in srv.log_since(mark).splitlines()
           if any(re.search(p, line) for p in PANIC_PATTERNS)]
    assert not bad, "\n".join(bad[:10])


def test_saved_write_called_later_from_another_thread_raises(srv):
    """A write() kept past its request and called later from another thread raises
    an ordinary Python exception (a subclass of Exception, not pyo3's
    PanicException) with a message that says what is wrong; nothing panics."""
    tok = token()
    mark = srv.log_mark()
    resp = srv.get(f"/save-write?token={tok}")
    assert resp.status_code == 200 and resp.content == b"saved", explain(resp, srv)
    result = get_json(srv, f"/call-saved?token={tok}")
    assert json.loads(state_text(srv, f"{tok}.late")) == result
    assert result["raised"] is True, result
    assert result["type"] != "PanicException" and result["is_exception"] is True, result
    assert result["message"] and re.search(r"request|response|write", result["message"], re.I) \
        and "panic" not in result["message"].lower(), result
    # the request after it is served normally
    resp = srv.get("/cl")
    assert resp.status_code == 200 and resp.content == b"hello world", explain(resp, srv)
    bad = [line for line in srv.log_since(mark).splitlines()
           if any(re.search(p, line) for p in PANIC_PATTERNS)]
    assert not bad, "\n".join(bad[:10])


# --------------------------------------------------------------------------
# 8. framing headers of the response (RFC 9110/9112)
# --------------------------------------------------------------------------

def test_204_drops_app_content_length_and_body(srv):
    """A 204 whose app set Content-Length: 5 and yielded 5 bytes reaches the client
    without Content-Length and without a body; the connection is reused cleanly."""
    first, _ = keepalive_pair(srv, "GET", "/status204")
    assert first.status == 204, first.status_line
    assert first.header("X-Status-Probe") == "yes"
    assert first.header("Content-Length") is None, first.headers
    assert first.header("Transfer-Encoding") is None, first.headers


def test_304_has_no_body(srv):
    """A 304 whose app set Content-Length: 5 and yielded 5 bytes carries no body;
    the connection is reused cleanly."""
    first, _ = keepalive_pair(srv, "GET", "/status304")
    assert first.status == 304, first.status_line
    assert first.header("X-Status-Probe") == "yes"
    assert first.header("Transfer-Encoding") is None, first.headers


def test_app_transfer_encoding_is_not_forwarded(srv):
    """An app-set ``Transfer-Encoding: chunked`` (with an unencoded body) is not
    passed on as a second or bogus framing: the HTTP/1.1 response has at most one
    Transfer-Encoding header, parses and carries b"hello world", and the connection
    is reused; an HTTP/1.0 response has no Transfer-Encoding at all."""
    first, _ = keepalive_pair(srv, "GET", "/app-te")
    assert first.status == 200, first.status_line
    assert header_count(first, "Transfer-Encoding") <= 1, first.headers
    if first.header("Transfer-Encoding") is not None:
        assert first.header("Transfer-Encoding").lower() == "chunked", first.headers
        assert first.header("Content-Length") is None, first.headers
    assert first.complete, first.raw_body[:300]
    assert first.body == b"hello world", first.raw_body[:300]

    old = srv.raw("GET", "/app-te", version="HTTP/1.0")
    assert old.status == 200, explain(old, srv)
    assert old.header("Transfer-Encoding") is None, old.headers
    assert old.raw_body == b"hello world", old.raw_body[:300]


@pytest.mark.parametrize("path", ["/cl", "/cl?headbody=0"], ids=["body", "empty-for-head"])
def test_head_keeps_app_content_length(srv, path):
    """HEAD on a route that sets Content-Length: 11 gets that Content-Length and no
    body - whether the app produced the body or (as frameworks do) an empty one for
    HEAD - and the connection is reused cleanly."""
    first, _ = keepalive_pair(srv, "HEAD", path)
    assert first.status == 200, first.status_line
    assert first.header("Content-Length") == "11", first.headers
    assert first.header("Transfer-Encoding") is None, first.headers


def test_app_headers_pass_exactly_once(srv):
    """Location, ETag, Last-Modified, Content-Encoding and Cache-Control set by the
    app each appear exactly once, with the app's value."""
    resp = srv.raw("GET", "/framing-headers")
    assert resp.status == 200, explain(resp, srv)
    assert resp.raw_body == b"framed"
    expected = {
        "Location": "http://example.com/elsewhere",
        "ETag": '"abc123"',
        "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT",
        "Content-Encoding": "gzip",
        "Cache-Control": "max-age=60, public",
    }
    for name, value in expected.items():
        values = [v for n, v in resp.headers if n.lower() == name.lower()]
        assert values == [value], f"{name}: {values} in {resp.headers}"


# --------------------------------------------------------------------------
# 9. response header limits
# --------------------------------------------------------------------------

# one log line naming the app and saying its headers are too big (in either order)
TOO_BIG_RE = re.compile(r"(?im)^(?=.*hardening\.py)(?=.*too (?:big|large))(?=.*header).*$")


@pytest.mark.parametrize("path", ["/many-headers?n=10000", "/huge-header?size=1048576"],
                         ids=["10000-headers", "1MiB-header"])
def test_oversized_response_headers_give_502(srv, path):
    """An app sending 10,000 headers, or one header with a 1 MiB value, makes the
    client get 502 (as nginx's proxy answers for an upstream's too big header), and
    error.log has a line naming the application and saying the headers are too
    big. The worker serves the next request."""
    mark = srv.log_mark()
    resp = srv.raw("GET", path)
    assert resp.status == 502, f"{resp.status_line!r}, {len(resp.headers)} headers, " \
                               f"{len(resp.head_bytes)} bytes of head"
    assert resp.header("X-Huge") is None and resp.header("X-Many-00000") is None
    srv.wait_log(TOO_BIG_RE, since=mark)
    after = srv.raw("GET", "/cl")
    assert after.status == 200 and after.raw_body == b"hello world", explain(after, srv)


def test_normal_header_volume_passes(srv):
    """50 headers of 160 bytes (about 8 KB in all) pass: 200 with every header
    intact."""
    resp = srv.raw("GET", "/normal-headers")
    assert resp.status == 200, explain(resp, srv)
    assert resp.raw_body == b"normal"
    for i in range(50):
        name = f"X-Normal-{i:02d}"
        values = [v for n, v in resp.headers if n.lower() == name.lower()]
        assert values == [chr(ord("a") + i % 26) * 160], (name, values)


def test_max_header_size_directive(nginx_servers, mode):
    """``wsgi_max_header_size 128k;`` in a location lets a 100 KB header through
    (200, value intact) while the default (64k) location answers 502 for it."""
    server = nginx_servers(hardening_conf(MODES[mode], extra_locations="""
        location /big {
            wsgi_app @APPS@/hardening.py;
            wsgi_script_name /big;
            wsgi_max_header_size 128k;
        }"""), name=f"maxheader-{mode}", worker_processes=1)
    size = 100 * 1024
    resp = server.raw("GET", f"/big/huge-header?size={size}")
    assert resp.status == 200, explain(resp, server)
    assert resp.header("X-Huge") == "h" * size
    assert resp.raw_body == b"huge"
    resp = server.raw("GET", f"/huge-header?size={size}")
    assert resp.status == 502, resp.status_line


def test_bad_max_header_size_is_rejected(checker):
    """``nginx -t`` rejects ``wsgi_max_header_size abc;`` with an [emerg] line naming
    the directive (an invalid value, not an unknown directive) and the file:line."""
    lines = expect_emerg(checker, hardening_conf("", extra_locations="""
        location /big {
            wsgi_app @APPS@/hardening.py;
            wsgi_max_header_size abc;
        }"""), '"wsgi_max_header_size"', at="wsgi_max_header_size abc")
    assert not any("unknown directive" in line for line in lines), lines
    expect_config_ok(checker, hardening_conf("", extra_locations="""
        location /big {
            wsgi_app @APPS@/hardening.py;
            wsgi_max_header_size 128k;
        }"""))


# --------------------------------------------------------------------------
# 10. underscores in request header names
# --------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    [("X-A", "good"), ("X_A", "evil")],
    [("X_A", "evil"), ("X-A", "good")],
], ids=["dash-first", "underscore-first"])
def test_underscore_header_does_not_merge_into_dash_header(srv, headers):
    """With ``underscores_in_headers on``, ``X-A: good`` plus ``X_A: evil`` gives
    the app HTTP_X_A == "good" exactly: the underscore header is dropped from
    HTTP_* (as gunicorn does), never joined as "good, evil"."""
    env = raw_json(srv, "GET", "/environ", headers=headers)
    assert env.get("HTTP_X_A") == "good", env.get("HTTP_X_A")


def test_lone_underscore_header_is_dropped(srv):
    """A header with an underscore in its name does not become an HTTP_* variable
    at all (it could not be told apart from its dash spelling)."""
    env = raw_json(srv, "GET", "/environ", headers=[("X_B", "evil")])
    assert "HTTP_X_B" not in env, env.get("HTTP_X_B")
    assert "evil" not in env.values()


# --------------------------------------------------------------------------
# 11. write() inside close()
# --------------------------------------------------------------------------

def test_write_in_close_does_not_extend_body(srv):
    """The iterable's close() calls the request's write(b"late"): the body is
    exactly the iterable's pieces, properly terminated, and error.log shows the
    exception the late write() raised in close()."""
    tok = token()
    mark = srv.log_mark()
    resp = srv.raw("GET", f"/close-write?token={tok}")
    assert resp.status == 200, explain(resp, srv)
    assert resp.complete, resp.raw_body[:300]
    assert resp.body == b"onetwo", resp.body[:300]
    assert state_text(srv, f"{tok}.close") == "close called\n"
    log = srv.wait_log("LATE-WRITE-LINE", since=mark)
    assert "close() failed" in log, log[-3000:]


# --------------------------------------------------------------------------
# 12a. mount point and a location matching outside it
# --------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/shopping", "/shop", "/shop/", "/shop/cart"])
def test_script_name_plus_path_info_is_the_path(srv, path):
    """``location /shop`` with ``wsgi_script_name /shop``: for every request path
    SCRIPT_NAME + PATH_INFO == the path; /shop/cart splits as /shop + /cart, and
    /shopping (outside the mount point) is not given SCRIPT_NAME /shop."""
    info = get_json(srv, path)
    assert info["SCRIPT_NAME"] + info["PATH_INFO"] == path, info
    if path == "/shop/cart":
        assert (info["SCRIPT_NAME"], info["PATH_INFO"]) == ("/shop", "/cart"), info
    if path == "/shopping":
        assert (info["SCRIPT_NAME"], info["PATH_INFO"]) == ("", "/shopping"), info


# --------------------------------------------------------------------------
# 12b. an application whose first import failed, then many concurrent requests
# --------------------------------------------------------------------------

LAZY_APP = '''
import os
import time

import ngxtest_settings

STATE = ngxtest_settings.STATE_DIR


def _log(word):
    with open(os.path.join(STATE, "lazy.log"), "a") as f:
        f.write(f"{word} {os.getpid()}\\n")


if not os.path.exists(os.path.join(STATE, "lazy.ready")):
    _log("fail")
    raise ImportError("ngxtest-lazy: not ready yet")
_log("begin")
time.sleep(1.0)  # a slow import: the other requests arrive while it runs
_log("ok")


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"lazy"]
'''


def test_failed_import_is_retried_once_under_concurrency(nginx_servers):
    """Threaded mode only (the race needs concurrent Python threads). The app's
    import fails at worker start; once it can succeed, 12 concurrent requests
    arrive while the (1 s) import runs: the script body runs exactly once more
    (one "begin", one "ok"), the concurrent requests get 200 or 500 with at least
    one 200, and every request after that gets 200."""
    server = nginx_servers(hardening_conf("", extra_locations="""
        location /lazy {
            wsgi_app @PREFIX@/lazy_app.py;
        }"""), name="lazy", worker_processes=1, start=False)
    (server.prefix / "lazy_app.py").write_text(LAZY_APP)
    server.start()
    log = server.state_dir / "lazy.log"
    wait_until(lambda: log.exists() and "fail" in log.read_text(), 10,
               what="the first import to fail")
    (server.state_dir / "lazy.ready").write_text("")

    results = [None] * 12

    def hit(i):
        try:
            results[i] = server.raw("GET", "/lazy", timeout=30).status
        except Exception as exc:
            results[i] = repr(exc)

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(s in (200, 500) for s in results), results
    assert 200 in results, results
    for _ in range(5):
        resp = server.raw("GET", "/lazy")
        assert resp.status == 200 and resp.raw_body == b"lazy", explain(resp, server)
    words = [line.split()[0] for line in log.read_text().splitlines()]
    assert words.count("begin") == 1 and words.count("ok") == 1, words


# --------------------------------------------------------------------------
# 15. helper processes (cache manager / loader) do not run Python
# --------------------------------------------------------------------------

def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def task_count(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def test_cache_helpers_do_not_start_python(nginx_servers, mode):
    """With a ``proxy_cache_path`` nginx runs a cache manager and a cache loader
    beside the worker. Python is started only in the real worker: wsgi_status lists
    exactly one worker (the worker), only the worker imported the app, and the
    helpers have a single thread each. (A helper's title is set after its modules'
    init_process, so once it shows, initialisation is over.)"""
    if "http_proxy" in nginx_servers.flavor.compiled_out():
        pytest.skip("proxy module compiled out")
    server = nginx_servers(hardening_conf(MODES[mode]).replace(
        "server {", "proxy_cache_path @PREFIX@/cache keys_zone=z:1m;\n    server {", 1),
        name=f"cache-{mode}", worker_processes=1, start=False)
    server.forbidden_log_patterns = list(PANIC_PATTERNS)

    def titled(word):
        return {p for p in children_of(server.master_pid) if word in cmdline(p)}

    server.worker_pids = lambda: titled("worker process")  # the helpers are children too
    server.start()
    worker = only_worker(server)
    manager = wait_until(lambda: titled("cache manager process"), 10,
                         what="the cache manager process")
    loader = titled("cache loader process")
    helpers = manager | loader

    resp = server.raw("GET", "/cl")
    assert resp.status == 200, explain(resp, server)
    doc = get_json(server, "/wsgi-status")
    assert [w["pid"] for w in doc["workers"]] == [worker], (doc, worker, helpers)
    imported = {int(p) for p in state_text(server, "imports.log").split()}
    assert imported == {worker}, f"app imported by {imported}; worker {worker}, helpers {helpers}"
    for pid in helpers:
        assert task_count(pid) == 1, f"helper {pid} ({cmdline(pid)}) has {task_count(pid)} threads"


# --------------------------------------------------------------------------
# 16. conditional request headers are the application's business
# --------------------------------------------------------------------------

@pytest.mark.parametrize("validators", ["0", "1"], ids=["no-validators", "validators"])
@pytest.mark.parametrize("header", [
    ("If-Match", '"x"'),
    ("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"),
], ids=["if-match", "if-unmodified-since"])
def test_preconditions_do_not_turn_into_412(srv, header, validators):
    """A request with If-Match: "x" or an old If-Unmodified-Since, to an app that
    answers 200 (with or without ETag/Last-Modified), gets the app's 200 - not
    nginx's 412 -, the app ran exactly once and the connection stays usable."""
    tok = token()
    first, _ = keepalive_pair(srv, "GET", f"/cond?token={tok}&validators={validators}",
                              headers=[header])
    assert first.status == 200, first.raw[:500]
    assert first.body == b"fresh", first.raw[:500]
    assert state_text(srv, f"{tok}.runs") == "run\n"
