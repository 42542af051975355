"""The demo served by `make run`: a plain WSGI application, no framework.

    /            a page with a form (POST, file upload) and links
    /environ     the WSGI environ of the request
    /stream      a streamed response, one line every 0.3 s
"""

import html
import time


def _page(title, body):
    return (
        "<!doctype html><meta charset=utf-8><title>{0}</title>"
        "<link rel=stylesheet href=/static/style.css><h1>{0}</h1>{1}"
    ).format(html.escape(title), body).encode("utf-8")


def index(environ, start_response):
    message = ""
    if environ["REQUEST_METHOD"] == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(size)
        message = "<p>Received {} bytes of {}.</p>".format(
            len(data), html.escape(environ.get("CONTENT_TYPE", "?"))
        )
    body = _page(
        "ngx-wsgi demo",
        message
        + "<p>This page comes from a WSGI application running inside nginx.</p>"
        "<form method=post enctype=multipart/form-data>"
        "<input type=file name=upload> <input name=note value=hello> "
        "<button>Send</button></form>"
        "<ul><li><a href=/environ>environ</a><li><a href=/stream>a streamed response</a>"
        "<li><a href=/static/style.css>a static file served by nginx</a></ul>",
    )
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [body]


def show_environ(environ, start_response):
    lines = ["{} = {!r}".format(k, v) for k, v in sorted(environ.items())]
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return ["\n".join(lines).encode("utf-8")]


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    for i in range(1, 6):
        yield "line {} of 5\n".format(i).encode()
        time.sleep(0.3)


ROUTES = {"/": index, "/environ": show_environ, "/stream": stream}


def application(environ, start_response):
    handler = ROUTES.get(environ["PATH_INFO"])
    if handler is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    return handler(environ, start_response)
