"""Well-behaved WSGI fixture app for the PEP 3333 conformance tests.

``raw_application`` is the plain app; ``application`` is the same app wrapped
in ``wsgiref.validate.validator``, which raises AssertionError (-> a 500 and a
traceback in error.log) as soon as the server hands it a non-conforming
environ, start_response, wsgi.input or forgets to close the iterable.

Routes (on PATH_INFO, so the app works at any mount point):

/hello               fixed body with Content-Length
/environ...          JSON description of the environ
/input?mode=M[&n=N]  echo the request body read with one wsgi.input method
/sha256              hash of the body read with read(65536)
/nolength            three chunks, no Content-Length
/write               body from the write() callable, then from the iterable
/stream              b'first-chunk', 1.5 s pause, b'second-chunk'
/status/204|304      that status (no Content-Type) and a body that must be dropped
/excinfo             start_response twice, the second with exc_info -> 503
/errors?token=T      writes a marker line to wsgi.errors
/filewrapper         this file through wsgi.file_wrapper
/pid                 the worker's pid and parent pid
/close/ok|raise|slow?token=T
                     iterables whose close() is recorded in STATE_DIR/close-events.log
"""

import hashlib
import json
import os
import sys
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _record(token, event):
    """Append '<token> <event>' to the close-events file of this nginx instance."""
    import ngxtest_settings  # generated per server by the test harness

    with open(os.path.join(ngxtest_settings.STATE_DIR, "close-events.log"), "a") as f:
        f.write(f"{token} {event} {os.getpid()}\n")


def describe_environ(environ):
    keys = {}
    for key, value in environ.items():
        entry = {"key_type": type(key).__name__, "type": type(value).__name__}
        if isinstance(value, str):
            entry["value"] = value
        else:
            entry["repr"] = repr(value)
        keys[key if isinstance(key, str) else repr(key)] = entry
    wsgi_input = environ.get("wsgi.input")
    wsgi_errors = environ.get("wsgi.errors")
    return {
        "keys": keys,
        "input_methods": [m for m in ("read", "readline", "readlines", "__iter__")
                          if hasattr(wsgi_input, m)],
        "errors_methods": [m for m in ("write", "writelines", "flush")
                           if hasattr(wsgi_errors, m)],
        "file_wrapper_callable": callable(environ.get("wsgi.file_wrapper")),
    }


def read_input(environ, mode, n):
    """Read the whole body with one wsgi.input method; list of pieces read."""
    stream = environ["wsgi.input"]
    pieces = []
    if mode == "read":  # read() without a size: not allowed under wsgiref.validate
        pieces.append(stream.read())
    elif mode == "read_n":
        for _ in range(100000):
            piece = stream.read(n)
            pieces.append(piece)
            if not piece:
                break
    elif mode == "read_cl":
        pieces.append(stream.read(int(environ.get("CONTENT_LENGTH") or 0)))
    elif mode == "readline":
        for _ in range(100000):
            piece = stream.readline()
            pieces.append(piece)
            if not piece:
                break
    elif mode == "readline_n":
        for _ in range(100000):
            piece = stream.readline(n)
            pieces.append(piece)
            if not piece:
                break
    elif mode == "readlines":
        pieces.extend(stream.readlines())
    elif mode == "iter":
        pieces.extend(iter(stream))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return pieces


class RecordingIterable:
    """An iterable whose close() is recorded; optionally raises or is slow."""

    def __init__(self, token, chunks, fail_after=None, delay=0.0):
        self.token = token
        self.chunks = chunks
        self.fail_after = fail_after
        self.delay = delay

    def __iter__(self):
        for index, chunk in enumerate(self.chunks):
            if self.fail_after is not None and index == self.fail_after:
                raise RuntimeError(f"iterator failure {self.token}")
            if index and self.delay:
                time.sleep(self.delay)  # a slow body, for the client to leave mid-stream
                _record(self.token, f"iter{index}")
            yield chunk

    def close(self):
        _record(self.token, "close")


def raw_application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = _query(environ)

    if path == "/hello":
        body = b"hello world"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body))),
                                  ("X-Probe", "hello-probe")])
        return [body]

    if path.startswith("/environ"):
        return _json(start_response, describe_environ(environ))

    if path == "/input":
        pieces = read_input(environ, query.get("mode", "read_n"), int(query.get("n", "7")))
        return _json(start_response, {
            "pieces": [p.decode("latin-1") for p in pieces],
            "types": sorted({type(p).__name__ for p in pieces}),
        })

    if path == "/sha256":
        digest = hashlib.sha256()
        total = 0
        stream = environ["wsgi.input"]
        while True:
            piece = stream.read(65536)
            if not piece:
                break
            digest.update(piece)
            total += len(piece)
        return _json(start_response, {"sha256": digest.hexdigest(), "length": total,
                                      "content_length": environ.get("CONTENT_LENGTH")})

    if path == "/nolength":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"a" * 10, b"b" * 10, b"c" * 10]

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"from-write;")
        write(b"second-write;")
        return [b"from-iterable"]

    if path == "/stream":
        def stream():
            yield b"first-chunk"
            time.sleep(1.5)  # the behaviour under test: a pause mid-stream
            yield b"second-chunk"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return stream()

    if path in ("/status/204", "/status/304"):
        status = "204 No Content" if path.endswith("204") else "304 Not Modified"
        start_response(status, [("X-Status-Probe", "yes")])
        return [b"this-body-must-not-be-sent"]

    if path == "/excinfo":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("replaced before headers were sent")
        except ValueError:
            start_response("503 Service Unavailable",
                           [("Content-Type", "text/plain"), ("X-Replaced", "yes")],
                           sys.exc_info())
        return [b"replaced"]

    if path == "/errors":
        errors = environ["wsgi.errors"]
        errors.write(f"wsgi-errors-marker {query.get('token', '')}\n")
        errors.writelines([f"wsgi-errors-lines {query.get('token', '')}\n"])
        errors.flush()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"logged"]

    if path == "/filewrapper":
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 4096)

    if path == "/pid":
        return _json(start_response, {"pid": os.getpid(), "ppid": os.getppid()})

    if path.startswith("/close/"):
        token = query.get("token", "none")
        kind = path[len("/close/"):]
        start_response("200 OK", [("Content-Type", "text/plain")])
        if kind == "ok":
            return RecordingIterable(token, [b"one;", b"two"])
        if kind == "raise":
            return RecordingIterable(token, [b"one;", b"two"], fail_after=1)
        if kind == "slow":
            # About 10 s of output at most, so nothing runs forever if the
            # disconnect is never noticed.
            return RecordingIterable(token, [b"x" * 65536] * 200, delay=0.05)

    body = f"no route for {path!r}".encode("utf-8")
    start_response("404 Not Found", [("Content-Type", "text/plain"),
                                     ("Content-Length", str(len(body)))])
    return [body]


application = validator(raw_application)
