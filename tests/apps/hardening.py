"""Fixture app for tests/test_hardening.py: regression probes for hardening fixes.

What it records goes to the server's STATE_DIR (from the generated
``ngxtest_settings`` module), in files named after a ``token`` query parameter.
At import it appends its pid to STATE_DIR/imports.log (so a test can tell which
processes ran Python), and wraps ``sys.stdout.buffer`` in an
``io.TextIOWrapper`` the way mercurial does.

Routes (on PATH_INFO):

/environ              JSON: every str value of the environ, plus the body read from
                      wsgi.input (``body_len``, ``body_sha256``)
/input-race           reads wsgi.input from the request thread and from a second thread
                      at the same time; JSON with the bytes each got
/stdio?token=T        probes sys.stdout / sys.stderr as text streams (JSON) and writes
                      marker-*-T lines through print(), .write(), .writelines(),
                      .buffer.write() and the import-time TextIOWrapper
/cycle?gc=1&token=T   keeps start_response and write() in a self-referencing dict;
                      with gc=1 a new thread runs gc.collect() (and, with a token,
                      prints gc-done-T to stderr afterwards)
/save-write?token=T   keeps write() past the end of the request
/call-saved?token=T   calls the kept write() from a new thread; JSON of what happened,
                      also written to T.late
/close-write?token=T  an iterable (b"one", b"two") whose close() calls write(b"late")
/status204            204 with an app-set Content-Length: 5 and a 5-byte body
/status304            304 with an app-set Content-Length: 5 and a 5-byte body
/app-te               app-set Transfer-Encoding: chunked, body b"hello world" (unencoded)
/cl[?headbody=0]      Content-Length: 11, b"hello world" (headbody=0: empty body for HEAD)
/many-headers?n=N     N extra headers
/huge-header?size=N   one header with an N-byte value
/normal-headers       50 headers of 160 bytes each (about 8 KB)
/cond?token=T&validators=1
                      200 b"fresh" (with ETag/Last-Modified when validators=1); each run
                      appends a line to T.runs
/framing-headers      Location, ETag, Last-Modified, Content-Encoding, Cache-Control
"""

import gc
import hashlib
import io
import json
import os
import sys
import threading
from urllib.parse import parse_qs

import ngxtest_settings  # generated per server by the test harness

STATE = ngxtest_settings.STATE_DIR


def _append(name, line):
    with open(os.path.join(STATE, name), "a") as f:
        f.write(line + "\n")


def _write_state(name, text):
    """Replace a state file atomically."""
    path = os.path.join(STATE, name)
    tmp = f"{path}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_append("imports.log", str(os.getpid()))

# mercurial (and others) re-wrap the standard streams at import time.
try:
    _WRAPPED = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="replace",
                                line_buffering=True)
    _WRAP_ERROR = None
except BaseException as exc:  # reported by /stdio
    _WRAPPED = None
    _WRAP_ERROR = f"{type(exc).__name__}: {exc}"

SAVED = {}  # token -> write() callable kept past its request


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _plain(start_response, body, status="200 OK", extra=()):
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def _outcome(fn):
    """{"ok": <result>} or {"raised": "<Type>: <message>"} for fn()."""
    try:
        result = fn()
    except BaseException as exc:
        return {"raised": f"{type(exc).__name__}: {exc}"}
    return {"ok": result if isinstance(result, (int, str, bool, type(None))) else repr(result)}


def _exception_info(exc):
    return {"raised": True, "type": type(exc).__name__,
            "module": type(exc).__module__, "message": str(exc),
            "is_exception": isinstance(exc, Exception)}


# ----------------------------------------------------------------------------
# routes
# ----------------------------------------------------------------------------

def environ_route(environ, start_response, q):
    body = environ["wsgi.input"].read()
    info = {k: v for k, v in environ.items() if isinstance(v, str)}
    info["body_len"] = len(body)
    info["body_sha256"] = hashlib.sha256(body).hexdigest()
    return _json(start_response, info)


def input_race(environ, start_response, q):
    stream = environ["wsgi.input"]
    got = {}
    both = threading.Barrier(2)

    def drain(who):
        total = 0
        try:
            both.wait(10)
            while True:
                piece = stream.read(1024)
                if not piece:
                    break
                total += len(piece)
        except BaseException as exc:
            got[who + "_error"] = f"{type(exc).__name__}: {exc}"
        got[who] = total

    other = threading.Thread(target=drain, args=("thread",))
    other.start()
    drain("request")
    other.join()
    got["thread_alive"] = other.is_alive()
    return _json(start_response, got)


def stdio(environ, start_response, q):
    tok = q["token"]
    report = {"wrap_error": _WRAP_ERROR}
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        info = {}
        info["type"] = type(stream).__name__
        info["has_buffer"] = hasattr(stream, "buffer")
        info["encoding"] = getattr(stream, "encoding", None)
        info["errors"] = getattr(stream, "errors", None)
        info["fileno"] = _outcome(lambda: stream.fileno())
        info["isatty"] = _outcome(lambda: stream.isatty())
        info["flush"] = _outcome(lambda: stream.flush())
        info["writelines"] = _outcome(
            lambda: stream.writelines([f"marker-writelines-{name}-{tok}\n"]))
        if info["has_buffer"]:
            data = f"marker-buffer-{name}-{tok}\n".encode()
            info["buffer_write"] = _outcome(lambda: stream.buffer.write(data))
            info["buffer_flush"] = _outcome(lambda: stream.buffer.flush())
        report[name] = info
    print(f"marker-stdout-{tok}")
    sys.stderr.write(f"marker-stderr-{tok}\n")
    if _WRAPPED is not None:
        report["wrapped_write"] = _outcome(lambda: _WRAPPED.write(f"marker-wrapped-{tok}\n"))
    return _json(start_response, report)


def thread_log(environ, start_response, q):
    """A thread the application starts writes to sys.stderr and sys.stdout."""
    tok = q["token"]

    def talk():
        sys.stderr.write(f"marker-thread-stderr-{tok}\n")
        print(f"marker-thread-stdout-{tok}")

    t = threading.Thread(target=talk)
    t.start()
    t.join()
    return _plain(start_response, b"talked")


def cycle(environ, start_response, q):
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    junk = {"start_response": start_response, "write": write}
    junk["self"] = junk  # only the cycle collector can free this
    del junk
    if q.get("gc"):
        collector = threading.Thread(target=gc.collect)
        collector.start()
        collector.join()
        if q.get("token"):
            sys.stderr.write(f"gc-done-{q['token']}\n")
    return [b"ok"]


def save_write(environ, start_response, q):
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    SAVED[q["token"]] = write
    return [b"saved"]


def call_saved(environ, start_response, q):
    tok = q["token"]
    saved = SAVED.pop(tok)
    result = {}

    def late():
        try:
            saved(b"late")
        except BaseException as exc:  # PanicException derives from BaseException
            result.update(_exception_info(exc))
        else:
            result.update({"raised": False})

    t = threading.Thread(target=late)
    t.start()
    t.join()
    _write_state(f"{tok}.late", json.dumps(result))
    return _json(start_response, result)


class CloseWrites:
    """Body b"one", b"two"; close() calls the request's write() after the body."""

    def __init__(self, write, token):
        self.write = write
        self.token = token

    def __iter__(self):
        yield b"one"
        yield b"two"

    def close(self):
        _write_state(f"{self.token}.close", "close called\n")
        self.write(b"late")  # LATE-WRITE-LINE


def close_write(environ, start_response, q):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    return CloseWrites(write, q["token"])


def status_with_length(status):
    def route(environ, start_response, q):
        start_response(status, [("Content-Length", "5"), ("X-Status-Probe", "yes")])
        return [b"hello"]
    return route


def app_te(environ, start_response, q):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")])

    def body():
        yield b"hello"
        yield b" world"
    return body()


def content_length(environ, start_response, q):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
    if environ["REQUEST_METHOD"] == "HEAD" and q.get("headbody") == "0":
        return []
    return [b"hello world"]


def many_headers(environ, start_response, q):
    n = int(q.get("n", "10000"))
    return _plain(start_response, b"many", extra=[(f"X-Many-{i:05d}", "v") for i in range(n)])


def huge_header(environ, start_response, q):
    size = int(q.get("size", str(1024 * 1024)))
    return _plain(start_response, b"huge", extra=[("X-Huge", "h" * size)])


NORMAL_HEADERS = [(f"X-Normal-{i:02d}", chr(ord("a") + i % 26) * 160) for i in range(50)]


def normal_headers(environ, start_response, q):
    return _plain(start_response, b"normal", extra=NORMAL_HEADERS)


def cond(environ, start_response, q):
    _append(f"{q['token']}.runs", "run")
    extra = []
    if q.get("validators") == "1":
        extra = [("ETag", '"v1"'), ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")]
    return _plain(start_response, b"fresh", extra=extra)


FRAMING_HEADERS = [
    ("Location", "http://example.com/elsewhere"),
    ("ETag", '"abc123"'),
    ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ("Content-Encoding", "gzip"),
    ("Cache-Control", "max-age=60, public"),
]


def framing_headers(environ, start_response, q):
    return _plain(start_response, b"framed", extra=FRAMING_HEADERS)


ROUTES = {
    "/environ": environ_route,
    "/input-race": input_race,
    "/stdio": stdio,
    "/thread-log": thread_log,
    "/cycle": cycle,
    "/save-write": save_write,
    "/call-saved": call_saved,
    "/close-write": close_write,
    "/status204": status_with_length("204 No Content"),
    "/status304": status_with_length("304 Not Modified"),
    "/app-te": app_te,
    "/cl": content_length,
    "/many-headers": many_headers,
    "/huge-header": huge_header,
    "/normal-headers": normal_headers,
    "/cond": cond,
    "/framing-headers": framing_headers,
}


def application(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        return _plain(start_response, b"no such route", status="404 Not Found")
    return route(environ, start_response, _query(environ))
