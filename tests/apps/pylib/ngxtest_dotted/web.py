"""WSGI callable with a non-default name, loaded by dotted module path."""


def app(environ, start_response):
    body = f"dotted app from {__name__}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
