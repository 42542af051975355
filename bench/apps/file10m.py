"""A 10 MiB file sent through wsgi.file_wrapper (servers may use sendfile for it).

The file is made by bench/run.py (build/bench/data/file-10m.bin, deterministic bytes);
BENCH_FILE overrides its path. A server without wsgi.file_wrapper gets a plain
iterator of 64 KiB blocks.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.environ.get("BENCH_FILE") or os.path.join(
    HERE, os.pardir, os.pardir, "build", "bench", "data", "file-10m.bin")
PATH = os.path.normpath(PATH)
BLOCK = 64 * 1024


def _blocks(f):
    try:
        while True:
            data = f.read(BLOCK)
            if not data:
                break
            yield data
    finally:
        f.close()


def application(environ, start_response):
    f = open(PATH, "rb")
    size = os.fstat(f.fileno()).st_size
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        return wrapper(f, BLOCK)
    return _blocks(f)
