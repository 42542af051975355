"""A streamed response: 100 chunks of 1 KiB from a generator, no Content-Length
(HTTP/1.1 chunked transfer encoding, or the server's equivalent)."""

CHUNKS = 100
CHUNK = b"x" * 1023 + b"\n"


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return (CHUNK for _ in range(CHUNKS))
