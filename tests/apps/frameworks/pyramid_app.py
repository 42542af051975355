"""A Pyramid app (tests/test_frameworks.py). Pyramid answers 404 with its HTTPNotFound
view; a view that raises has no exception view here, so the exception leaves the WSGI app
and the module answers 500 and logs the traceback."""

import importlib.metadata

from pyramid.config import Configurator
from pyramid.response import Response

import ngxtest_fw as common

NAME = "pyramid"
VERSION = importlib.metadata.version("pyramid")


def page(request):
    return Response(common.page(NAME, VERSION, request.script_name, request.path_info),
                    content_type="text/html", charset="utf-8")


def form(request):
    return Response(common.echo(NAME, request.POST.get("name", ""),
                                request.POST.getall("color")),
                    content_type="text/plain", charset="utf-8")


def stream(request):
    return Response(app_iter=common.pieces(NAME), content_type="text/plain", charset="utf-8")


def boom(request):
    common.boom(NAME)


with Configurator() as config:
    for name, path, view, method in (("page", "/", page, "GET"),
                                     ("form", "/form", form, "POST"),
                                     ("stream", "/stream", stream, "GET"),
                                     ("boom", "/boom", boom, "GET")):
        config.add_route(name, path)
        config.add_view(view, route_name=name, request_method=method)
    application = config.make_wsgi_app()
