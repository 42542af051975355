"""Script app named wsgi.py; twin of ../multi_a/wsgi.py (same file name and
global names) with different state and a different logging setup.

/count   increments this module's COUNTER by 100, answers b"<NAME> <COUNTER> <pid>"
/log?t=T logs "b-info T" (INFO, below this logger's level: must not appear) and
         "b-warning T" (WARNING) through the logger "multi.b": a StreamHandler()
         (sys.stderr as it was at import), format "B|LEVEL|msg", level WARNING,
         not propagated to the root logger
"""

import logging
import os
from urllib.parse import parse_qs

NAME = "multi-b"
COUNTER = 0

log = logging.getLogger("multi.b")
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("B|%(levelname)s|%(message)s"))
log.addHandler(_handler)
log.setLevel(logging.WARNING)
log.propagate = False


def application(environ, start_response):
    global COUNTER
    path = environ.get("PATH_INFO", "")
    if path == "/count":
        COUNTER += 100
        body = f"{NAME} {COUNTER} {os.getpid()}".encode()
    elif path == "/log":
        t = parse_qs(environ.get("QUERY_STRING", "")).get("t", [""])[0]
        log.info("b-info %s", t)
        log.warning("b-warning %s", t)
        body = b"logged"
    else:
        body = f"{NAME} {path}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
