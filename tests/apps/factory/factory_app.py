"""Application factories for tests/test_factories.py (``wsgi_app factory_app:create_app(...)``).

``create_app`` counts its calls in this process: every response says how many times the
factory ran in the worker that answered (1, if the module calls it once per worker).
"""

import os

CALLS = 0


def create_app(env="development", debug=False, ratio=1.0):
    global CALLS
    CALLS += 1
    calls_now = CALLS

    def app(environ, start_response):
        body = f"env={env} debug={debug} ratio={ratio} pid={os.getpid()} calls={calls_now}\n".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def not_an_app():
    return 42
