"""A plain Werkzeug app (tests/test_frameworks.py): a routing Map, Request/Response.
Werkzeug's NotFound is the 404 page; a handler that raises leaves the WSGI app and the
module answers 500 and logs the traceback."""

import importlib.metadata

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

import ngxtest_fw as common

NAME = "werkzeug"
VERSION = importlib.metadata.version("werkzeug")


def page(request):
    return Response(common.page(NAME, VERSION, request.script_root, request.path),
                    mimetype="text/html")


def form(request):
    return Response(common.echo(NAME, request.form.get("name", ""),
                                request.form.getlist("color")), mimetype="text/plain")


def stream(request):
    return Response(common.pieces(NAME), mimetype="text/plain")


def boom(request):
    common.boom(NAME)


URLS = Map([
    Rule("/", endpoint=page, methods=["GET"]),
    Rule("/form", endpoint=form, methods=["POST"]),
    Rule("/stream", endpoint=stream, methods=["GET"]),
    Rule("/boom", endpoint=boom, methods=["GET"]),
])


@Request.application
def application(request):
    try:
        endpoint, _ = URLS.bind_to_environ(request.environ).match()
    except HTTPException as exc:
        return exc
    return endpoint(request)
