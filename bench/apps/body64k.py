"""A 64 KiB response body, built once at import, sent as one item with Content-Length."""

SIZE = 64 * 1024
BODY = (b"0123456789abcdef" * (SIZE // 16))[:SIZE]
HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(SIZE))]


def application(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
