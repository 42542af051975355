"""A script app that tests copy into several directories as ``wsgi.py``
(``harness.install_twins``: ``<prefix>/twins/a/wsgi.py``, ``<prefix>/twins/b/wsgi.py``):
copies with the same file name and the same global names, each with its identity (the
directory name), its own module state and its own logging setup (tests/test_routing.py:
two scripts named wsgi.py; tests/test_workers.py: several apps in one worker).

/count    increments this module's COUNTER by STEP, answers b"twin-<id> <COUNTER> <pid>"
/log?t=T  logs "<id>-debug T", "<id>-info T" and "<id>-warning T" through the logger
          "twin.<id>", with its own handler, format and level (below), not propagated
          to the root logger
other     b"twin-<id> file=<__file__> script_name=<SCRIPT_NAME>"

    id  STEP  handler                          format                 level
    a   1     StreamHandler(sys.stderr)        twin-a[LEVEL] msg      DEBUG
    b   100   StreamHandler() (sys.stderr as   B|LEVEL|msg            WARNING
              it was at import)
"""

import logging
import os
import sys
from urllib.parse import parse_qs

ID = os.path.basename(os.path.dirname(os.path.abspath(__file__)))
NAME = f"twin-{ID}"
COUNTER = 0

if ID == "a":
    STEP = 1
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("twin-a[%(levelname)s] %(message)s"))
    _level = logging.DEBUG
else:
    STEP = 100
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter(f"{ID.upper()}|%(levelname)s|%(message)s"))
    _level = logging.WARNING

log = logging.getLogger(f"twin.{ID}")
log.addHandler(_handler)
log.setLevel(_level)
log.propagate = False


def application(environ, start_response):
    global COUNTER
    path = environ.get("PATH_INFO", "")
    if path == "/count":
        COUNTER += STEP
        body = f"{NAME} {COUNTER} {os.getpid()}".encode()
    elif path == "/log":
        t = parse_qs(environ.get("QUERY_STRING", "")).get("t", [""])[0]
        log.debug("%s-debug %s", ID, t)
        log.info("%s-info %s", ID, t)
        log.warning("%s-warning %s", ID, t)
        body = b"logged"
    else:
        body = f"{NAME} file={__file__} script_name={environ.get('SCRIPT_NAME', '')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
