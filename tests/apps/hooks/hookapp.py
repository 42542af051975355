"""App served by the worker hook tests: answers its pid; at interpreter exit
(atexit) it appends ``atexit <pid>`` to STATE_DIR/hooks.log."""

import atexit
import os

import ngxtest_settings  # generated per server by the test harness


def _at_exit():
    with open(os.path.join(ngxtest_settings.STATE_DIR, "hooks.log"), "a") as f:
        f.write(f"atexit {os.getpid()}\n")


atexit.register(_at_exit)


def application(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
