"""Fixture app for tests/test_native.py (wsgi_param, the module's variables).

/env            JSON of the CGI keys the test looks at
/logvars?user=U sets environ["nginx.log_vars"]["user"] (and "Plan") for $wsgi_log_*
/sleep?ms=N     sleeps N ms, for $wsgi_app_time
/status?code=N  answers that status
"""

import json
import logging
import time
from urllib.parse import parse_qs

KEYS = ["REMOTE_USER", "X_CUSTOM", "EMPTY", "REMOTE_ADDR", "HTTPS", "wsgi.url_scheme",
        "S_PARAM", "L_PARAM", "HTTP_X_FORWARDED_FOR"]


def application(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "")
    status = "200 OK"
    if path.endswith("/env"):
        body = json.dumps({k: environ.get(k) for k in KEYS}).encode()
    elif path.endswith("/logvars"):
        environ["nginx.log_vars"]["user"] = q.get("user", "")
        environ["nginx.log_vars"]["Plan"] = 42
        body = b"logged"
    elif path.endswith("/log"):
        tok = q["token"]
        log = logging.getLogger("native")
        log.debug("debug-%s", tok)
        log.info("info-%s", tok)
        log.warning("warning-%s", tok)
        log.error("error-%s", tok)
        try:
            raise ValueError(f"boom-{tok}")
        except ValueError:
            log.exception("exception-%s", tok)
        if q.get("crit"):
            log.critical("critical-%s", tok)
        body = b"logged"
    elif path.endswith("/sleep"):
        time.sleep(int(q["ms"]) / 1000)
        body = b"slept"
    elif path.endswith("/status"):
        status = f"{q['code']} Whatever"
        body = b"status"
    else:
        status, body = "404 Not Found", b"no such route"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
