"""The one application every configuration serves: routes the request path to the
workload apps in this directory, so every server runs exactly the same Python.

    /hello     hello.py       13 bytes
    /64k       body64k.py     64 KiB
    /sleep     sleep1ms.py    waits 1 ms
    /sleep100  sleep100ms.py  waits 100 ms (the mixed workload's sleeping load)
    /echo      echo.py        POST body echoed back
    /file      file10m.py     10 MiB through wsgi.file_wrapper
    /stream    stream.py      100 chunks of 1 KiB
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

import body64k  # noqa: E402
import echo  # noqa: E402
import file10m  # noqa: E402
import hello  # noqa: E402
import sleep1ms  # noqa: E402
import sleep100ms  # noqa: E402
import stream  # noqa: E402

ROUTES = {
    "/hello": hello.application,
    "/64k": body64k.application,
    "/sleep": sleep1ms.application,
    "/sleep100": sleep100ms.application,
    "/echo": echo.application,
    "/file": file10m.application,
    "/stream": stream.application,
}

NOT_FOUND = b"not found\n"


def application(environ, start_response):
    app = ROUTES.get(environ.get("PATH_INFO", ""))
    if app is None:
        start_response("404 Not Found", [("Content-Type", "text/plain"),
                                          ("Content-Length", str(len(NOT_FOUND)))])
        return [NOT_FOUND]
    return app(environ, start_response)
