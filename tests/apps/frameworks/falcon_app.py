"""A Falcon app (tests/test_frameworks.py). Falcon's own error handling answers 404 and,
for a handler that raises, 500 (the traceback goes to wsgi.errors through req.log_error)."""

import falcon

import ngxtest_fw as common

NAME = "falcon"


class Page:
    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_HTML
        resp.text = common.page(NAME, falcon.__version__, req.root_path, req.path)


class Form:
    def on_post(self, req, resp):
        form = req.get_media()          # falcon's URL-encoded form media handler
        colors = form.get("color", [])
        if isinstance(colors, str):
            colors = [colors]
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = common.echo(NAME, form.get("name", ""), colors)


class Stream:
    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_TEXT
        resp.stream = common.pieces(NAME)


class Boom:
    def on_get(self, req, resp):
        common.boom(NAME)


application = falcon.App()
application.add_route("/", Page())
application.add_route("/form", Form())
application.add_route("/stream", Stream())
application.add_route("/boom", Boom())
