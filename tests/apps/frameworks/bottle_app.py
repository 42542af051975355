"""A Bottle app (tests/test_frameworks.py). Bottle answers 404 itself and turns a handler
that raises into its 500 page, writing the traceback to wsgi.errors."""

import bottle

import ngxtest_fw as common

NAME = "bottle"
application = bottle.Bottle()


@application.get("/")
def page():
    return common.page(NAME, bottle.__version__, bottle.request.script_name.rstrip("/"),
                       bottle.request.path)


@application.post("/form")
def form():
    bottle.response.content_type = "text/plain; charset=utf-8"
    forms = bottle.request.forms.decode()   # FormsDict, values decoded as UTF-8
    return common.echo(NAME, forms.get("name", ""), forms.getall("color"))


@application.get("/stream")
def stream():
    bottle.response.content_type = "text/plain; charset=utf-8"
    return common.pieces(NAME)


@application.get("/boom")
def boom():
    common.boom(NAME)
