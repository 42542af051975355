"""Echo: reads the whole request body from wsgi.input and sends it back.

The benchmark POSTs 1 MiB; the response has a Content-Length.
"""


def application(environ, start_response):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ["wsgi.input"]
    parts = []
    left = length
    while left > 0:
        chunk = stream.read(min(left, 256 * 1024))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    body = b"".join(parts)
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]
