"""Script app named wsgi.py with module-level state and its own logging setup;
its twin ../multi_b/wsgi.py has the same file name, the same global names and a
different logging setup (tests/test_workers.py, several apps in one worker).

/count   increments this module's COUNTER, answers b"<NAME> <COUNTER> <pid>"
/log?t=T logs "a-debug T" (DEBUG) and "a-info T" (INFO) through the logger
         "multi.a": its own StreamHandler(sys.stderr), format "multi-a[LEVEL] msg",
         level DEBUG, not propagated to the root logger
"""

import logging
import os
import sys
from urllib.parse import parse_qs

NAME = "multi-a"
COUNTER = 0

log = logging.getLogger("multi.a")
_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("multi-a[%(levelname)s] %(message)s"))
log.addHandler(_handler)
log.setLevel(logging.DEBUG)
log.propagate = False


def application(environ, start_response):
    global COUNTER
    path = environ.get("PATH_INFO", "")
    if path == "/count":
        COUNTER += 1
        body = f"{NAME} {COUNTER} {os.getpid()}".encode()
    elif path == "/log":
        t = parse_qs(environ.get("QUERY_STRING", "")).get("t", [""])[0]
        log.debug("a-debug %s", t)
        log.info("a-info %s", t)
        body = b"logged"
    else:
        body = f"{NAME} {path}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
