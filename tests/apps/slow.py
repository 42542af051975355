"""Fixture app for the thread-pool tests (tests/test_threads.py).

Everything it records goes to files in the server's STATE_DIR (from the
generated ``ngxtest_settings`` module), named after a ``token`` query
parameter so that each test reads only its own files.

Routes (on PATH_INFO):

/quick                  b"quick" at once
/sleep?s=S&token=T      writes T.started, sleeps S seconds, answers b"slept S"
                        (T.started is rewritten only when a token is given)
/multithread            JSON with wsgi.multithread / wsgi.multiprocess / wsgi.run_once
/stream?token=T&total=N&chunk=C
                        a generator of N bytes in C-byte pieces (defaults 200 MB, 64 KiB);
                        T.count always holds how many pieces it has produced, and
                        T.closed is written when the iterable's close() is called
/pieces?n=N&size=S&list=L
                        N pieces of S bytes, each a new bytes object of one letter (A, B,
                        C, ... in turn): a generator, or a list when L is 1
/ticker?token=T         1 KiB every 0.1 s for up to 20 s; close() writes T.closed
/timeout?token=T        sleeps 0.1 s up to 100 times; when a RequestTimeout arrives it
                        writes T.interrupted ("<module>.<class> <i>") and re-raises it
/late-timeout?token=T   sends the headers and b"first", then behaves like /timeout
"""

import json
import os
import threading
import time
from urllib.parse import parse_qs

import ngxtest_settings  # generated per server by the test harness


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _state(token, suffix):
    return os.path.join(ngxtest_settings.STATE_DIR, f"{token}.{suffix}")


def _write(token, suffix, text):
    """Replace the state file atomically, so a reader never sees half of it."""
    path = _state(token, suffix)
    tmp = f"{path}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _plain(start_response, body, status="200 OK"):
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))])
    return [body]


class Recorded:
    """An iterable whose close() is recorded in <token>.closed (with how many
    pieces were produced by then)."""

    def __init__(self, token, pieces):
        self.token = token
        self.pieces = pieces
        self.produced = 0

    def __iter__(self):
        for piece in self.pieces:
            self.produced += 1
            yield piece

    def close(self):
        _write(self.token, "closed", f"closed after {self.produced} pieces\n")


def _stream(token, total, chunk):
    piece = b"x" * chunk
    sent = 0
    count = 0
    while sent < total:
        yield piece[:total - sent]
        sent += chunk
        count += 1
        _write(token, "count", str(count))


def _ticker():
    for i in range(200):
        yield b"%-1023d\n" % i
        time.sleep(0.1)  # the behaviour under test: a body that ticks


def _interruptible(token):
    for i in range(100):
        try:
            time.sleep(0.1)  # SLEEP-LINE: the stack logged on timeout points here
        except Exception as exc:
            if type(exc).__name__ == "RequestTimeout":
                _write(token, "interrupted",
                       f"{type(exc).__module__}.{type(exc).__qualname__} {i}")
            raise
    _write(token, "interrupted", "never interrupted")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = _query(environ)
    token = q.get("token", "none")

    if path == "/quick":
        return _plain(start_response, b"quick")

    if path == "/sleep":
        seconds = float(q.get("s", "1"))
        if "token" in q:
            _write(token, "started", str(time.time()))
        time.sleep(seconds)  # the behaviour under test: a request that holds its thread
        return _plain(start_response, b"slept %s" % q.get("s", "1").encode())

    if path == "/multithread":
        body = json.dumps({key: environ.get(key) for key in
                           ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once")})
        return _plain(start_response, body.encode())

    if path == "/stream":
        total = int(q.get("total", str(200 * 1024 * 1024)))
        chunk = int(q.get("chunk", str(64 * 1024)))
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(total))])
        return Recorded(token, _stream(token, total, chunk))

    if path == "/pieces":
        n, size = int(q.get("n", "4")), int(q.get("size", str(1024 * 1024)))
        pieces = (bytes([65 + i % 26]) * size for i in range(n))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return list(pieces) if q.get("list") == "1" else pieces

    if path == "/ticker":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Recorded(token, _ticker())

    if path == "/timeout":
        _interruptible(token)
        return _plain(start_response, b"finished without timeout")

    if path == "/late-timeout":
        def late():
            yield b"first"
            _interruptible(token)
            yield b"finished without timeout"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return late()

    return _plain(start_response, b"no such route " + path.encode(), "404 Not Found")
