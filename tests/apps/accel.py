"""Fixture app for tests/test_accel.py: X-Accel-* responses and statuses for error pages.

/dl/NAME?token=T    X-Accel-Redirect: /internal/NAME, with Content-Disposition; its body
                    must not reach the client; close() writes T.closed
/named              X-Accel-Redirect: @fallback
/limited            X-Accel-Redirect: /internal/big.bin with X-Accel-Limit-Rate: 102400
/status?code=N      answers status N with an own body (and WWW-Authenticate for 401)
"""

import os
from urllib.parse import parse_qs

import ngxtest_settings


class Body:
    def __init__(self, token):
        self.token = token

    def __iter__(self):
        yield b"the application's body must not reach the client"

    def close(self):
        if self.token:
            with open(os.path.join(ngxtest_settings.STATE_DIR, f"{self.token}.closed"), "w") as f:
                f.write("closed")


def application(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ["PATH_INFO"]
    if path.startswith("/dl/"):
        name = path[len("/dl/"):]
        start_response("200 OK", [
            ("Content-Type", "application/x-protected"),
            ("Content-Disposition", f'attachment; filename="{name}"'),
            ("X-Accel-Redirect", f"/internal/{name}"),
            ("X-App-Only", "dropped on redirect"),
        ])
        return Body(q.get("token"))
    if path == "/named":
        start_response("200 OK", [("X-Accel-Redirect", "@fallback")])
        return [b"unused"]
    if path == "/limited":
        start_response("200 OK", [("X-Accel-Redirect", "/internal/big.bin"),
                                  ("X-Accel-Limit-Rate", "102400")])
        return [b""]
    if path == "/status":
        code = int(q["code"])
        headers = [("Content-Type", "text/plain")]
        if code == 401:
            headers.append(("WWW-Authenticate", 'Basic realm="app"'))
        body = f"the application's own {code} page".encode()
        start_response(f"{code} Status", headers + [("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such route"]
