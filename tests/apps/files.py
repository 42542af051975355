"""Fixture app for tests/test_file_wrapper.py: responses through wsgi.file_wrapper.

/file?path=P[&skip=N][&cl=M][&type=T][&lastmod=1]
    opens P, reads N bytes first (so the object's position is N while the OS position is
    further on, Python's buffering), answers wsgi.file_wrapper(f) with an optional
    Content-Length M and Last-Modified of the file.
/bytesio?n=N   a BytesIO (no fileno): iterated in blocks.
/big-list?n=N  one bytes object of N bytes (produced whole at once)
/quick         b"quick"
"""

import email.utils
import io
import os
from urllib.parse import parse_qs


def application(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "")
    if path == "/quick":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"quick"]
    if path == "/file":
        f = open(q["path"], "rb")
        skip = int(q.get("skip", "0"))
        if skip:
            f.read(skip)
        headers = [("Content-Type", q.get("type", "application/octet-stream"))]
        if "cl" in q:
            headers.append(("Content-Length", q["cl"]))
        if q.get("lastmod"):
            mtime = os.fstat(f.fileno()).st_mtime
            headers.append(("Last-Modified", email.utils.formatdate(mtime, usegmt=True)))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f, 8192)
    if path == "/big-list":
        body = b"x" * int(q["n"])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/bytesio":
        data = bytes(range(256)) * (int(q.get("n", "1000")) // 256 + 1)
        data = data[:int(q.get("n", "1000"))]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(data), 1000)
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such route"]
