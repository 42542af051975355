"""Script app named wsgi.py; its twin in ../site_b/ has the same file name.

Answers with its own identity so a test can tell the two apart.
"""

SITE = "site-a"


def application(environ, start_response):
    body = f"{SITE} file={__file__} script_name={environ.get('SCRIPT_NAME', '')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
