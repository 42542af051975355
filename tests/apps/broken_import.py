"""An app whose import fails: the server must log the traceback and answer 500."""

raise ImportError("ngxtest-broken-import: this module refuses to load")


def application(environ, start_response):  # never reached
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"unreachable"]
