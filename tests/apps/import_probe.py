"""Records the pid of every process that imports it (in STATE_DIR/imports.log).

Shows that apps are imported in the workers at worker start, never in the
master and never by ``nginx -t``.
"""

import json
import os

import ngxtest_settings  # generated per server by the test harness

with open(os.path.join(ngxtest_settings.STATE_DIR, "imports.log"), "a") as _f:
    _f.write(f"{os.getpid()}\n")

VERSION = "version-1"


def application(environ, start_response):
    body = json.dumps({"version": VERSION, "pid": os.getpid(),
                       "ppid": os.getppid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
