"""The module inside the nginx features people put around a content handler:
debug logging, limit_rate, gzip, expires, conditional requests, sub_filter,
addition, SSI (the module serving subrequests, and its output parsed by SSI),
add_header always, error_page, auth_request, mirror,
client_body_in_file_only, proxy_cache in front, access_log variables,
pipelining, HEAD and HTTP/2.

Every test runs in both execution modes (``mode``: threaded = ``wsgi_threads``
unset, inline = ``wsgi_threads 0`` at http level) and on both flavours. Most
tests share one nginx per (flavour, mode) with many locations (``features``):
the app is tests/apps/features.py, static files are written into
<prefix>/html, a second server block in the same nginx speaks HTTP/2 over TLS
and a third one is a proxy_cache in front of the first. Time bounds appear
only in the limit_rate tests and are wide.
"""

import gzip
import os
import re
import socket
import subprocess
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import requests

from harness import (RawResponse, build_request, explain, free_port, nginx_version, raw_http, token,
                     wait_until)

MODES = {"threaded": "", "inline": "wsgi_threads 0;"}

SIZED_LEN = 1234  # features.SIZED_LEN


def text_body(n):
    """features.text_body: what /text and /pregz produce."""
    return b"".join(b"line %05d: hello world, hello again\n" % i for i in range(n))


def big_body(total):
    """features.big_body: what /big produces."""
    pattern = bytes(range(256))
    return (pattern * (total // 256 + 1))[:total]


def only_nginx_workers(srv):
    """worker_pids() that ignores the cache manager / cache loader processes
    (children of the master too, once proxy_cache_path is configured)."""
    def worker_pids():
        pids = set()
        for pid in srv.__class__.worker_pids(srv):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"worker process" in cmdline:
                pids.add(pid)
        return pids
    srv.worker_pids = worker_pids


# --------------------------------------------------------------------------
# A keep-alive connection that reads one response at a time
# --------------------------------------------------------------------------

class Conn:
    """A bare socket with a read buffer: send requests, read responses one by
    one (body framing from Content-Length / chunked / HEAD / 204 / 304), then
    whatever follows (``rest``, which must be b"" after a closing response)."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.seen = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self):
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"server sent nothing more; so far {self.seen[-600:]!r}") from None
        if not data:
            raise AssertionError(f"connection closed early; so far {self.seen[-600:]!r}")
        self.buf += data
        self.seen += data

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def response(self, method="GET") -> RawResponse:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        assert self.buf.startswith(b"HTTP/1."), \
            f"a response must start with its status line; got {self.buf[:300]!r}"
        i = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:i], self.buf[i:]
        parsed = RawResponse(head, [])
        if method == "HEAD" or parsed.status in (204, 304) or parsed.status < 200:
            body = b""
        elif parsed.chunked:
            body = b""
            while True:
                line = self._line()
                body += line
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        line = self._line()
                        body += line
                        if line == b"\r\n":
                            break
                    break
                body += self._take(size + 2)
        elif parsed.header("Content-Length") is not None:
            body = self._take(int(parsed.header("Content-Length")))
        else:
            body = self.rest()
        return RawResponse(head + body, [])

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"the connection stayed open; buffered {self.buf[:300]!r}") \
                    from None
            except ConnectionResetError:
                break
            if not data:
                break
            self.buf += data
        out, self.buf = self.buf, b""
        return out


def req(method, path, headers=(), body=b"", close=False):
    return build_request(method, path, list(headers), body, close=close)


def header_values(resp: RawResponse, name: str) -> list:
    return [v for n, v in resp.headers if n.lower() == name.lower()]


# --------------------------------------------------------------------------
# The shared server
# --------------------------------------------------------------------------

FEATURES_CONF = r"""
    wsgi_python_path @PYLIB@;
    @MODE@
    log_format t '$status $body_bytes_sent $request_uri';
    log_format h2 '$connection $server_protocol $request_uri';
    proxy_cache_path @PREFIX@/cache keys_zone=c:1m;

    server {
        listen 127.0.0.1:@PORT@;
        server_name localhost;
        client_max_body_size 10m;

        location /app/ {
            wsgi_app @APPS@/features.py;
            wsgi_script_name /app;
        }
        location /static/ { root @PREFIX@/html; }
        location /pages/ { root @PREFIX@/html; ssi on; }
        location = /err.html { root @PREFIX@/html; }

        location /rate/ {
            limit_rate 100k;
            limit_rate_after 0;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /rate;
        }
        location /rate-after/ {
            limit_rate 100k;
            limit_rate_after 100k;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /rate-after;
        }
        location /gzip/ {
            gzip on;
            gzip_types text/plain;
            gzip_min_length 0;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /gzip;
        }
        location /expires/ {
            expires 1h;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /expires;
        }
        location /sub/ {
            sub_filter 'hello' 'HELLO';
            sub_filter_once off;
            sub_filter_types text/plain;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /sub;
        }
        location /addition/ {
            add_before_body /static/before.txt;
            add_after_body /static/after.txt;
            addition_types text/plain;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /addition;
        }
        location /ssi-app/ {
            ssi on;
            ssi_types text/plain;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /ssi-app;
        }
        location /always/ {
            add_header X-Always yes always;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /always;
        }
        location /errpage/ {
            error_page 500 /err.html;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /errpage;
        }
        location /protected/ {
            auth_request /auth;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /protected;
        }
        location = /auth {
            internal;
            wsgi_app @APPS@/features.py;
        }
        location /mirrored/ {
            mirror /mirror;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /mirrored;
        }
        location = /mirror {
            internal;
            wsgi_app @APPS@/features.py;
        }
        location /inonly/ {
            client_body_in_file_only on;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /inonly;
        }
        location /logged/ {
            access_log @PREFIX@/logs/t.log t;
            wsgi_app @APPS@/features.py;
            wsgi_script_name /logged;
        }
    }

    server {
        listen 127.0.0.1:@H2PORT@ ssl@H2LISTEN@;
        @H2ON@
        server_name localhost;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        client_max_body_size 10m;
        access_log @PREFIX@/logs/h2.log h2;
        location /app/ {
            wsgi_app @APPS@/features.py;
            wsgi_script_name /app;
        }
    }

    server {
        listen 127.0.0.1:@CACHEPORT@;
        server_name localhost;
        location / {
            proxy_pass http://127.0.0.1:@PORT@/app/;
            proxy_cache c;
            add_header X-Cache-Status $upstream_cache_status always;
        }
    }
"""

STATIC_FILES = {
    "static/before.txt": b"BEFORE\n",
    "static/after.txt": b"AFTER\n",
    "static/inc.txt": b"included-static",
    "err.html": b"<html><body>custom error page</body></html>\n",
    "pages/page.html": (b'<p>A<!--# include virtual="/app/fragment?n=1" -->B'
                        b'<!--# include virtual="/app/fragment?n=2" -->C'
                        b'<!--# include virtual="/app/stream-fragment?n=3" -->D</p>\n'),
}


@pytest.fixture(scope="module", params=list(MODES))
def mode(request):
    """threaded (``wsgi_threads`` unset: the default pool) or inline (``wsgi_threads 0``)."""
    return request.param


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("features-cert")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def features(nginx_module_servers, flavor, mode, tls_cert):
    """One nginx (2 workers) per (flavour, mode) with all the feature locations.

    ``srv.h2_port``: the HTTP/2 + TLS server block; ``srv.cache_port``: the
    proxy_cache server block in front of the first one."""
    cert, key = tls_cert
    h2_port, cache_port = free_port(), free_port()
    if nginx_version(str(flavor.nginx)) >= (1, 25, 1):
        h2_listen, h2_on = "", "http2 on;"
    else:
        h2_listen, h2_on = " http2", ""
    conf = (FEATURES_CONF.replace("@MODE@", MODES[mode])
            .replace("@H2PORT@", str(h2_port)).replace("@CACHEPORT@", str(cache_port))
            .replace("@H2LISTEN@", h2_listen).replace("@H2ON@", h2_on)
            .replace("@CERT@", str(cert)).replace("@KEY@", str(key)))
    srv = nginx_module_servers(conf, name=f"features-{mode}", start=False)
    for rel, content in STATIC_FILES.items():
        path = srv.prefix / "html" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    only_nginx_workers(srv)
    srv.start()
    srv.h2_port, srv.cache_port = h2_port, cache_port
    # Stopped (and its logs checked) by nginx_module_servers at the end of the
    # module, so that a server that cannot quit does not break the next test.
    return srv


def state_text(srv, tok, suffix):
    try:
        return (srv.state_dir / f"{tok}.{suffix}").read_text()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------
# 1. debug logging
# --------------------------------------------------------------------------

DEBUG_CONF = """
    wsgi_python_path @PYLIB@;
    @MODE@
    @EXTRA@
    server {
        listen 127.0.0.1:@PORT@;
        client_max_body_size 10m;
        location /app/ {
            wsgi_app @APPS@/features.py;
            wsgi_script_name /app;
        }
    }
"""
DEBUG_MAIN = "error_log @PREFIX@/logs/debug.log debug;"


def debug_conf(mode, extra=""):
    return DEBUG_CONF.replace("@MODE@", MODES[mode]).replace("@EXTRA@", extra)


def assert_no_crash(srv):
    for name in ("error.log", "debug.log", "stderr.log"):
        path = srv.prefix / "logs" / name
        if path.exists():
            text = path.read_text(errors="replace")
            crashes = [line for line in text.splitlines() if "exited on signal" in line]
            assert not crashes, f"{name}: {crashes}\n--- error.log ---\n{srv.log_tail(60)}"


def test_debug_log_many_requests(nginx_servers, mode):
    """``error_log .../debug.log debug;`` beside the normal log: 300 requests
    (keep-alive and fresh connections, fixed-length and streamed, POST bodies,
    the app's 404) all succeed, the workers are the same processes at the end,
    none died, and debug.log really has debug lines."""
    srv = nginx_servers(debug_conf(mode), main_conf=DEBUG_MAIN, name=f"debug-{mode}")
    workers = srv.worker_pids()
    payload = os.urandom(20000)
    with requests.Session() as session:
        for i in range(100):
            resp = session.get(srv.url("/app/hello"), timeout=10)
            assert (resp.status_code, resp.content) == (200, b"hello world\n"), explain(resp, srv)
            resp = session.get(srv.url("/app/stream?n=7"), timeout=10)
            assert (resp.status_code, resp.content) == \
                (200, b"".join(b"piece %d\n" % k for k in range(7))), explain(resp, srv)
    for i in range(60):
        resp = srv.get("/app/text?stream=1&n=50", timeout=10)  # fresh connection each
        assert (resp.status_code, resp.content) == (200, text_body(50)), explain(resp, srv)
        resp = srv.post("/app/echo", data=payload, timeout=10)
        assert (resp.status_code, resp.content) == (200, payload), explain(resp, srv)
    for i in range(20):
        resp = srv.get("/app/missing", timeout=10)
        assert (resp.status_code, resp.content) == (404, b"not found\n"), explain(resp, srv)
    assert srv.worker_pids() == workers, "a worker was replaced"
    assert_no_crash(srv)
    debug_text = (srv.prefix / "logs" / "debug.log").read_text(errors="replace")
    assert "[debug]" in debug_text, "debug.log has no [debug] lines: not a debug build?"


def test_debug_log_recycling_drain(nginx_servers, mode):
    """Debug logging plus ``wsgi_max_requests 50`` with one worker: requests on
    fresh connections until a new worker answers; every one is a 200, the first
    worker logs "recycling worker", exits with code 0 (not on a signal) and the
    master's new worker serves."""
    srv = nginx_servers(debug_conf(mode, "wsgi_max_requests 50;"), main_conf=DEBUG_MAIN,
                        name=f"debug-recycle-{mode}", worker_processes=1)
    (first,) = srv.worker_pids()
    pids = []
    deadline = time.monotonic() + 20
    while not pids or pids[-1] == first:
        assert time.monotonic() < deadline, \
            f"no new worker after {len(pids)} requests\n{srv.log_tail(60)}"
        try:
            resp = srv.get("/app/pid", timeout=10)
        except requests.RequestException as exc:
            assert_no_crash(srv)
            raise AssertionError(f"request {len(pids) + 1} failed: {exc!r}\n"
                                 f"{srv.log_tail(60)}") from None
        assert resp.status_code == 200, explain(resp, srv)
        pids.append(int(resp.text))
    assert pids.count(first) >= 50, pids
    srv.wait_log(f"recycling worker {first}", timeout=5)
    srv.wait_log(re.compile(rf"worker process {first} exited with code 0\b"), timeout=10)
    resp = srv.get("/app/hello", timeout=10)
    assert (resp.status_code, resp.content) == (200, b"hello world\n"), explain(resp, srv)
    assert_no_crash(srv)


# --------------------------------------------------------------------------
# 2. limit_rate
# --------------------------------------------------------------------------

# nginx's write filter allows `rate * (whole seconds since the request started + 1)` bytes past
# `limit_rate_after`: up to two seconds' worth can go at once when a request starts just before
# a second boundary. The fastest paced response therefore takes (rest - 2 * rate) / rate.
RATE = 100 * 1024


def paced_min(total, after=0):
    return (total - after - 2 * RATE) / RATE * 0.9


@pytest.mark.parametrize("stream", ["1", "0"], ids=["streamed", "fixed"])
def test_limit_rate(features, stream):
    """``limit_rate 100k; limit_rate_after 0;`` and 300 000 bytes: the whole
    response arrives (terminating chunk / full Content-Length), paced by the
    rate (about 1-3 s), not held until send_timeout."""
    total = 300000
    resp = raw_http(features.port, build_request(
        "GET", f"/rate/big?stream={stream}&total={total}&piece=10000"), timeout=10)
    assert resp.status == 200, explain(resp, features)
    assert resp.complete, f"response not complete: {len(resp.raw_body)} raw body bytes"
    assert resp.body == big_body(total)
    assert paced_min(total) <= resp.end_time <= 8, f"{total} bytes at 100k/s took {resp.end_time:.2f}s"


@pytest.mark.parametrize("stream", ["1", "0"], ids=["streamed", "fixed"])
def test_limit_rate_after(features, stream):
    """``limit_rate 100k; limit_rate_after 100k;`` and 400 000 bytes: the first
    100 000 arrive at once, the rest at the rate; the response completes."""
    total = 400000
    resp = raw_http(features.port, build_request(
        "GET", f"/rate-after/big?stream={stream}&total={total}&piece=10000"), timeout=10)
    assert resp.status == 200, explain(resp, features)
    assert resp.complete, f"response not complete: {len(resp.raw_body)} raw body bytes"
    assert resp.body == big_body(total)
    received, first_100k = 0, None
    for t, data in resp.events:
        received += len(data)
        if received >= 100000:
            first_100k = t
            break
    assert first_100k is not None and first_100k < 1.0, \
        f"the first 100 000 bytes (before limit_rate_after) took {first_100k}s"
    assert paced_min(total, 100 * 1024) <= resp.end_time <= 8, f"{total} bytes took {resp.end_time:.2f}s"


# --------------------------------------------------------------------------
# 3. gzip
# --------------------------------------------------------------------------

@pytest.mark.parametrize("stream", ["1", "0"], ids=["streamed", "fixed"])
def test_gzip_compresses_app_body(features, stream):
    resp = features.raw("GET", f"/gzip/text?stream={stream}&n=500",
                        headers=[("Accept-Encoding", "gzip")])
    assert resp.status == 200, explain(resp, features)
    assert resp.complete
    assert header_values(resp, "Content-Encoding") == ["gzip"], resp.headers
    assert gzip.decompress(resp.body) == text_body(500)


def test_gzip_body_without_accept_encoding_is_plain(features):
    resp = features.raw("GET", "/gzip/text?stream=1&n=500")
    assert resp.status == 200, explain(resp, features)
    assert header_values(resp, "Content-Encoding") == [], resp.headers
    assert resp.body == text_body(500)


def test_gzip_does_not_compress_app_gzipped_body_again(features):
    """The app sends its own gzip body with ``Content-Encoding: gzip``: nginx's
    gzip filter must leave it alone (one Content-Encoding, gunzips once)."""
    resp = features.raw("GET", "/gzip/pregz?n=500", headers=[("Accept-Encoding", "gzip")])
    assert resp.status == 200, explain(resp, features)
    assert resp.complete
    assert header_values(resp, "Content-Encoding") == ["gzip"], resp.headers
    assert gzip.decompress(resp.body) == text_body(500)


# --------------------------------------------------------------------------
# 4. expires
# --------------------------------------------------------------------------

def test_expires_replaces_app_cache_headers(features):
    """``expires 1h`` over an app that sets Cache-Control: no-cache and an
    Expires of its own: like for proxy_pass, nginx replaces them: one
    Cache-Control (max-age=3600) and one Expires (an hour from now)."""
    before = time.time()
    resp = features.raw("GET", "/expires/own-cache-headers")
    assert resp.status == 200, explain(resp, features)
    assert resp.body == b"own cache headers\n"
    assert header_values(resp, "Cache-Control") == ["max-age=3600"], resp.headers
    expires = header_values(resp, "Expires")
    assert len(expires) == 1, resp.headers
    when = parsedate_to_datetime(expires[0]).timestamp()
    assert before + 3600 - 5 <= when <= time.time() + 3600 + 5, expires


# --------------------------------------------------------------------------
# 5. the app's own 304
# --------------------------------------------------------------------------

def test_app_304_keeps_connection_usable(features):
    with Conn(features.port) as conn:
        conn.send(req("GET", "/app/etag"))
        first = conn.response()
        assert first.status == 200 and first.body == b"etag body v1\n", first.raw[:400]
        assert first.header("ETag") == '"v1"'
        conn.send(req("GET", "/app/etag", [("If-None-Match", '"v1"')]))
        second = conn.response()
        assert second.status == 304, second.raw[:400]
        assert second.header("ETag") == '"v1"'
        assert second.header("Transfer-Encoding") is None, second.headers
        conn.send(req("GET", "/app/hello", close=True))
        third = conn.response()  # fails if the 304 carried body bytes
        assert third.status == 200 and third.body == b"hello world\n", third.raw[:400]
        assert conn.rest() == b""


# --------------------------------------------------------------------------
# 6. sub_filter, 7. addition
# --------------------------------------------------------------------------

@pytest.mark.parametrize("stream", ["1", "0"], ids=["streamed", "fixed"])
def test_sub_filter(features, stream):
    resp = features.raw("GET", f"/sub/text?stream={stream}&n=300")
    assert resp.status == 200, explain(resp, features)
    assert resp.complete
    assert resp.body == text_body(300).replace(b"hello", b"HELLO")


@pytest.mark.parametrize("route", ["hello", "stream?n=3"])
def test_addition_before_and_after(features, route):
    resp = features.raw("GET", f"/addition/{route}")
    assert resp.status == 200, explain(resp, features)
    assert resp.complete
    inner = b"hello world\n" if route == "hello" else b"piece 0\npiece 1\npiece 2\n"
    assert resp.body == b"BEFORE\n" + inner + b"AFTER\n"


# --------------------------------------------------------------------------
# 8. SSI
# --------------------------------------------------------------------------

def test_ssi_page_includes_wsgi_fragments(features):
    """A static SSI page including /app/ (the module serving subrequests)
    three times, one of them streamed: all in order, page complete."""
    resp = features.raw("GET", "/pages/page.html")
    assert resp.status == 200, explain(resp, features)
    assert resp.complete
    assert resp.body == b"<p>A<frag 1>B<frag 2>C<stream-frag 3>D</p>\n"


def test_ssi_page_keep_alive(features):
    """The same page twice on one connection: nothing left over from the
    subrequests between the two responses."""
    with Conn(features.port) as conn:
        for close in (False, True):
            conn.send(req("GET", "/pages/page.html", close=close))
            resp = conn.response()
            assert resp.status == 200, resp.raw[:400]
            assert resp.body == b"<p>A<frag 1>B<frag 2>C<stream-frag 3>D</p>\n"
        assert conn.rest() == b""


def test_ssi_in_app_output(features):
    """``ssi on; ssi_types text/plain`` on the WSGI location: the app's page
    is parsed and the static include is inserted."""
    resp = features.raw("GET", "/ssi-app/ssi-page")
    assert resp.status == 200, explain(resp, features)
    assert resp.complete
    assert resp.body == b"app-start[included-static]app-end\n"


# --------------------------------------------------------------------------
# 9. add_header always, 11. error_page
# --------------------------------------------------------------------------

@pytest.mark.parametrize("route,status", [("hello", 200), ("missing", 404), ("raise", 500)])
def test_add_header_always(features, route, status):
    resp = features.raw("GET", f"/always/{route}")
    assert resp.status == status, explain(resp, features)
    assert resp.complete
    assert header_values(resp, "X-Always") == ["yes"], resp.headers


def test_error_page_for_app_exception(features):
    resp = features.raw("GET", "/errpage/raise")
    assert resp.status == 500, explain(resp, features)
    assert resp.complete
    assert resp.body == STATIC_FILES["err.html"]
    assert resp.header("Content-Type") == "text/html", resp.headers


# --------------------------------------------------------------------------
# 12. auth_request, 13. mirror
# --------------------------------------------------------------------------

def test_auth_request_denied_and_allowed(features):
    """/auth is a WSGI location: 401 without ``X-Token: good`` (with a body of
    its own, which must not reach the client), 204 with it. Denied: a normal
    401 from nginx and the protected app is never called; then, on the same
    connection, allowed: 200 with the app's body."""
    tok = token()
    with Conn(features.port) as conn:
        conn.send(req("GET", f"/protected/secret?token={tok}"))
        denied = conn.response()
        assert denied.status == 401, denied.raw[:400]
        assert b"AUTH-SUBREQUEST-BODY-MUST-NOT-LEAK" not in conn.seen, conn.seen[:600]
        assert b"secret" not in denied.body
        assert state_text(features, tok, "protected") is None, "the protected app was called"

        conn.send(req("GET", f"/protected/secret?token={tok}", [("X-Token", "good")],
                      close=True))
        allowed = conn.response()
        assert allowed.status == 200, allowed.raw[:400]
        assert allowed.body == b"secret %s\n" % tok.encode()
        assert conn.rest() == b""
        assert b"AUTH-SUBREQUEST-BODY-MUST-NOT-LEAK" not in conn.seen, conn.seen[:600]
    assert state_text(features, tok, "protected") == "called\n"


def test_auth_request_denied_fresh_connection(features):
    tok = token()
    resp = features.raw("GET", f"/protected/secret?token={tok}", headers=[("X-Token", "bad")])
    assert resp.raw.startswith(b"HTTP/1.1 401 "), resp.raw[:400]
    assert resp.complete
    assert b"AUTH-SUBREQUEST-BODY-MUST-NOT-LEAK" not in resp.raw
    assert state_text(features, tok, "protected") is None


def test_mirror_calls_mirror_app(features):
    tok = token()
    resp = features.raw("GET", f"/mirrored/main?token={tok}", timeout=10)
    assert resp.status == 200, explain(resp, features)
    assert resp.body == b"main %s\n" % tok.encode()
    assert b"MIRROR-BODY" not in resp.raw
    seen = wait_until(lambda: state_text(features, tok, "mirror"), 5,
                      what="the mirror subrequest's app to run")
    assert seen == f"GET /mirror token={tok}"


# --------------------------------------------------------------------------
# 14. client_body_in_file_only
# --------------------------------------------------------------------------

def test_client_body_in_file_only_echo(features):
    payload = os.urandom(300 * 1024)
    resp = features.raw("POST", "/inonly/echo", body=payload,
                        headers=[("Content-Type", "application/octet-stream")])
    assert resp.status == 200, explain(resp, features)
    assert resp.complete
    assert len(resp.body) == len(payload) and resp.body == payload


# --------------------------------------------------------------------------
# 15. proxy_cache in front
# --------------------------------------------------------------------------

def test_proxy_cache_in_front(features):
    tok = token()
    url = f"http://127.0.0.1:{features.cache_port}/cached?token={tok}"
    cache_dir = features.prefix / "cache"
    before = set(cache_dir.iterdir()) if cache_dir.is_dir() else set()
    first = requests.get(url, timeout=10)
    # The proxy stores the response once the upstream response has ended, which can be just
    # after the client has all of it; the second request may reach the other worker first.
    # A new file in the cache directory (temp files live elsewhere) is the stored entry.
    wait_until(lambda: set(cache_dir.iterdir()) - before, 10, what="the cache entry")
    second = requests.get(url, timeout=10)
    assert first.status_code == 200 and second.status_code == 200, explain(first, features)
    assert first.content == second.content == b"count=1\n"
    assert first.headers.get("X-Cache-Status") == "MISS", first.headers
    assert second.headers.get("X-Cache-Status") == "HIT", second.headers
    assert state_text(features, tok, "count") == "1"


# --------------------------------------------------------------------------
# 16. access_log with $status $body_bytes_sent
# --------------------------------------------------------------------------

def test_access_log_status_and_body_bytes(features):
    tok = token()
    sized = features.raw("GET", f"/logged/sized?token={tok}")
    missing = features.raw("GET", f"/logged/missing?token={tok}")
    streamed = features.raw("GET", f"/logged/stream?n=20&token={tok}")
    head = features.raw("HEAD", f"/logged/stream?n=20&token={tok}&head=1")
    assert (sized.status, len(sized.body)) == (200, SIZED_LEN)
    assert (missing.status, missing.body) == (404, b"not found\n")
    assert streamed.status == 200 and streamed.chunked and streamed.complete, streamed.headers
    assert head.status == 200 and head.raw_body == b""
    expected = [
        f"200 {SIZED_LEN} /logged/sized?token={tok}",
        f"404 10 /logged/missing?token={tok}",
        # chunked: what went on the wire after the header, framing included
        f"200 {len(streamed.raw_body)} /logged/stream?n=20&token={tok}",
        f"200 0 /logged/stream?n=20&token={tok}&head=1",
    ]
    log = features.prefix / "logs" / "t.log"

    def lines():
        text = log.read_text() if log.exists() else ""
        got = [line for line in text.splitlines() if tok in line]
        return got if len(got) >= len(expected) else None

    assert wait_until(lines, 5, what="4 access log lines") == expected


# --------------------------------------------------------------------------
# 17. pipelining, 18. HEAD on a streamed response
# --------------------------------------------------------------------------

def test_pipelined_requests(features):
    data = (req("GET", "/app/path?i=1") + req("GET", "/app/stream?n=4")
            + req("GET", "/app/path?i=3", close=True))
    with Conn(features.port) as conn:
        conn.send(data)
        first, second, third = conn.response(), conn.response(), conn.response()
        rest = conn.rest()
    assert (first.status, first.body) == (200, b"/path?i=1\n"), first.raw[:300]
    assert (second.status, second.body) == (200, b"piece 0\npiece 1\npiece 2\npiece 3\n"), \
        second.raw[:300]
    assert second.complete
    assert (third.status, third.body) == (200, b"/path?i=3\n"), third.raw[:300]
    assert rest == b""


def test_head_on_streamed_response(features):
    with Conn(features.port) as conn:
        conn.send(req("HEAD", "/app/stream?n=50"))
        head = conn.response("HEAD")
        assert head.status == 200, head.raw[:300]
        assert head.header("Content-Type") == "text/plain"
        conn.send(req("GET", "/app/hello", close=True))
        after = conn.response()  # fails if the HEAD response carried body bytes
        assert (after.status, after.body) == (200, b"hello world\n"), after.raw[:300]
        assert conn.rest() == b""
    closing = features.raw("HEAD", "/app/stream?n=50")
    assert closing.status == 200 and closing.raw_body == b"", closing.raw[:300]


# --------------------------------------------------------------------------
# 10. HTTP/2
# --------------------------------------------------------------------------

def curl(*args, timeout=30):
    proc = subprocess.run(["curl", "--http2", "-k", "-sS", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"curl failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def test_http2_concurrent_streams(features, tmp_path):
    """20 requests multiplexed on one HTTP/2 connection (half of them streamed
    by the app): each gets its own body; nginx saw them all on one connection."""
    tag = token()
    args = ["--parallel", "--parallel-max", "20",
            "-w", "%{http_version} %{response_code} %{num_connects}\\n"]
    for i in range(20):
        args += [f"https://127.0.0.1:{features.h2_port}/app/h2?i={i}&stream={i % 2}&tag={tag}",
                 "-o", str(tmp_path / f"out{i}")]
    out = curl(*args)
    results = [line.split() for line in out.splitlines() if line.strip()]
    assert len(results) == 20, out
    assert all(r[:2] == ["2", "200"] for r in results), out
    assert sum(int(r[2]) for r in results) == 1, f"more than one connection:\n{out}"
    for i in range(20):
        assert (tmp_path / f"out{i}").read_bytes() == b"h2 stream %d\n" % i
    log = features.prefix / "logs" / "h2.log"

    def lines():
        text = log.read_text() if log.exists() else ""
        got = [line.split() for line in text.splitlines() if tag in line]
        return got if len(got) >= 20 else None

    got = wait_until(lines, 5, what="20 h2 access log lines")
    assert len({conn for conn, _, _ in got}) == 1, got
    assert {proto for _, proto, _ in got} == {"HTTP/2.0"}, got


def test_http2_large_post_echo(features, tmp_path):
    payload = os.urandom(1024 * 1024)
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(payload)
    out = curl("--data-binary", f"@{src}", "-H", "Content-Type: application/octet-stream",
               "-o", str(dst), "-w", "%{http_version} %{response_code}",
               f"https://127.0.0.1:{features.h2_port}/app/echo")
    assert out.split() == ["2", "200"], out
    got = dst.read_bytes()
    assert len(got) == len(payload) and got == payload
