"""Imports a module that exists only in the virtualenv named by ``wsgi_python_home``."""

import json

import ngxtest_venv_only


def application(environ, start_response):
    body = json.dumps({"marker": ngxtest_venv_only.MARKER,
                       "file": ngxtest_venv_only.__file__}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
