"""WSGI fixture app that breaks the rules on purpose (never wrapped in a validator).

Each route makes one mistake; the server must turn it into a 500 (when nothing
was sent yet) or a cut-off response (when headers/body already went out),
log it, and keep the worker alive.

/crlf-value            header value containing CR LF
/nonlatin1-value       header value '\u20ac' (not latin-1)
/bytes-value           header value of type bytes
/bad-status?s=TEXT     status string TEXT (URL-encoded)
/int-status            status 200 as an int
/start-twice           start_response twice without exc_info
/str-yield             yields a str as the first body item
/none-return           returns None instead of an iterable
/raise-before?token=T  raises before start_response
/raise-midstream       yields one chunk, then raises
/excinfo-after-headers start_response(exc_info) after the first chunk was sent
"""

import sys
from urllib.parse import parse_qs

TEXT = [("Content-Type", "text/plain")]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}

    if path == "/crlf-value":
        start_response("200 OK", TEXT + [("X-Bad", "a\r\nInjected: yes")])
        return [b"should not be sent"]

    if path == "/nonlatin1-value":
        start_response("200 OK", TEXT + [("X-Euro", "\u20ac")])
        return [b"should not be sent"]

    if path == "/bytes-value":
        start_response("200 OK", TEXT + [("X-Bytes", b"abc")])
        return [b"should not be sent"]

    if path == "/bad-status":
        start_response(query.get("s", ""), TEXT)
        return [b"should not be sent"]

    if path == "/int-status":
        start_response(200, TEXT)
        return [b"should not be sent"]

    if path == "/start-twice":
        start_response("200 OK", TEXT)
        start_response("404 Not Found", TEXT)
        return [b"second start_response was accepted"]

    if path == "/str-yield":
        start_response("200 OK", TEXT)
        return ["a str, not bytes"]

    if path == "/none-return":
        start_response("200 OK", TEXT)
        return None

    if path == "/raise-before":
        raise RuntimeError(f"boom-before-start {query.get('token', '')}")

    if path == "/raise-midstream":
        def body():
            yield b"first-part;"
            raise RuntimeError("boom-midstream")
        start_response("200 OK", TEXT)
        return body()

    if path == "/excinfo-after-headers":
        def body():
            yield b"first-part;"
            try:
                raise ValueError("late failure")
            except ValueError:
                start_response("500 Internal Server Error", TEXT, sys.exc_info())
            yield b"NOT-RAISED: start_response accepted exc_info after headers were sent"
        start_response("200 OK", TEXT)
        return body()

    start_response("404 Not Found", TEXT)
    return [b"no such route"]
