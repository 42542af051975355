"""Reports how the request was split into SCRIPT_NAME and PATH_INFO."""

import json


def application(environ, start_response):
    body = json.dumps({
        "SCRIPT_NAME": environ.get("SCRIPT_NAME"),
        "PATH_INFO": environ.get("PATH_INFO"),
        "REQUEST_URI": environ.get("REQUEST_URI"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
