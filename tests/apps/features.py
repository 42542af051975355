"""Fixture app for tests/test_nginx_features.py: the module inside the nginx
features people put around a content handler (gzip, sub_filter, addition, SSI,
auth_request, mirror, limit_rate, expires, error_page, proxy_cache, HTTP/2...).

Routes on PATH_INFO (the app is mounted at several locations, mostly with
``wsgi_script_name``; the auth and mirror subrequest locations have none, so
their PATH_INFO is the full URI). What the app records goes to files in the
server's STATE_DIR (generated ``ngxtest_settings``), named after a ``token``
query parameter.

/hello                  b"hello world\\n" with Content-Length
/text?stream=0|1&n=N    TEXT(n): N lines containing "hello" twice (text/plain); stream=1
                        yields it in 997-byte pieces (splitting words across pieces), no
                        Content-Length; stream=0 is one piece with Content-Length
/big?stream=0|1&total=N&piece=P
                        BIG(N) (bytes 0..255 repeated), octet-stream; stream=1 yields
                        P-byte pieces without Content-Length
/pregz?n=N              gzip.compress(TEXT(N)) with Content-Encoding: gzip (text/plain)
/own-cache-headers      sets Cache-Control: no-cache and an Expires in 1970
/etag                   ETag "v1"; 304 (no body) when If-None-Match is "v1", else 200
/fragment?n=N           b"<frag N>" (Content-Length)
/stream-fragment?n=N    b"<stream", b"-frag N>" as two pieces, no Content-Length
/ssi-page               text/plain page with an SSI include of /static/inc.txt
/missing                the app's own 404, body b"not found\\n"
/raise                  raises before start_response
/auth                   (auth_request target) 204 when X-Token is "good", else 401 with
                        a body that must never reach the client
/secret?token=T         appends a line to T.protected, answers b"secret T\\n"
/mirror?token=T         (mirror target) writes T.mirror "<METHOD> <PATH_INFO> <QUERY>"
/main?token=T           b"main T\\n"
/echo                   the request body read from wsgi.input, octet-stream
/cached?token=T         increments T.count, answers b"count=<n>\\n" with max-age=60
/sized                  SIZED_LEN bytes with Content-Length
/stream?n=N             N pieces b"piece <i>\\n" from a generator, no Content-Length
/path                   b"<PATH_INFO>?<QUERY_STRING>\\n" (Content-Length)
/pid                    the worker's pid
/h2?i=I&stream=0|1      b"h2 stream I\\n" (as one piece, or as three pieces)
"""

import gzip
import os
import threading
from urllib.parse import parse_qs

import ngxtest_settings  # generated per server by the test harness

SIZED_LEN = 1234


def text_body(n):
    return b"".join(b"line %05d: hello world, hello again\n" % i for i in range(n))


def big_body(total):
    pattern = bytes(range(256))
    return (pattern * (total // 256 + 1))[:total]


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


_count_lock = threading.Lock()


def _plain(start_response, body, status="200 OK", headers=(), ctype="text/plain"):
    start_response(status, [("Content-Type", ctype),
                            ("Content-Length", str(len(body)))] + list(headers))
    return [body]


def _pieces(data, size):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _read_input(environ):
    stream = environ["wsgi.input"]
    chunks = []
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = _query(environ)
    token = q.get("token", "none")
    stream = q.get("stream", "0") == "1"

    if path == "/hello":
        return _plain(start_response, b"hello world\n")

    if path == "/text":
        body = text_body(int(q.get("n", "100")))
        if stream:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return _pieces(body, 997)
        return _plain(start_response, body)

    if path == "/big":
        body = big_body(int(q.get("total", "300000")))
        if stream:
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return _pieces(body, int(q.get("piece", "10000")))
        return _plain(start_response, body, ctype="application/octet-stream")

    if path == "/pregz":
        body = gzip.compress(text_body(int(q.get("n", "100"))))
        return _plain(start_response, body, headers=[("Content-Encoding", "gzip")])

    if path == "/own-cache-headers":
        return _plain(start_response, b"own cache headers\n",
                      headers=[("Cache-Control", "no-cache"),
                               ("Expires", "Thu, 01 Jan 1970 00:00:01 GMT")])

    if path == "/etag":
        if environ.get("HTTP_IF_NONE_MATCH") == '"v1"':
            start_response("304 Not Modified", [("ETag", '"v1"')])
            return []
        return _plain(start_response, b"etag body v1\n", headers=[("ETag", '"v1"')])

    if path == "/fragment":
        return _plain(start_response, b"<frag %s>" % q.get("n", "").encode())

    if path == "/stream-fragment":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"<stream", b"-frag %s>" % q.get("n", "").encode()])

    if path == "/ssi-page":
        return _plain(start_response,
                      b'app-start[<!--# include virtual="/static/inc.txt" -->]app-end\n')

    if path == "/missing":
        return _plain(start_response, b"not found\n", "404 Not Found")

    if path == "/raise":
        raise RuntimeError("features app raises before start_response")

    if path == "/auth":
        if environ.get("HTTP_X_TOKEN") == "good":
            start_response("204 No Content", [])
            return []
        return _plain(start_response, b"AUTH-SUBREQUEST-BODY-MUST-NOT-LEAK\n",
                      "401 Unauthorized")

    if path == "/secret":
        with open(_state(token, "protected"), "a") as f:
            f.write("called\n")
        return _plain(start_response, b"secret %s\n" % token.encode())

    if path == "/mirror":
        _write(token, "mirror", "%s %s %s" % (environ["REQUEST_METHOD"], path,
                                              environ.get("QUERY_STRING", "")))
        return _plain(start_response, b"MIRROR-BODY-MUST-NOT-REACH-THE-CLIENT\n")

    if path == "/main":
        return _plain(start_response, b"main %s\n" % token.encode())

    if path == "/echo":
        return _plain(start_response, _read_input(environ), ctype="application/octet-stream")

    if path == "/cached":
        with _count_lock:
            try:
                with open(_state(token, "count")) as f:
                    count = int(f.read()) + 1
            except FileNotFoundError:
                count = 1
            _write(token, "count", str(count))
        return _plain(start_response, b"count=%d\n" % count,
                      headers=[("Cache-Control", "max-age=60")])

    if path == "/sized":
        return _plain(start_response, b"s" * SIZED_LEN)

    if path == "/stream":
        n = int(q.get("n", "5"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"piece %d\n" % i for i in range(n))

    if path == "/path":
        return _plain(start_response,
                      ("%s?%s\n" % (path, environ.get("QUERY_STRING", ""))).encode())

    if path == "/pid":
        return _plain(start_response, str(os.getpid()).encode())

    if path == "/h2":
        body = b"h2 stream %s\n" % q.get("i", "").encode()
        if stream:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return iter([body[:3], body[3:6], body[6:]])
        return _plain(start_response, body)

    return _plain(start_response, b"no such route " + path.encode() + b"\n", "404 Not Found")
