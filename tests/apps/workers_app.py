"""Fixture app for worker recycling and ``wsgi_status`` (tests/test_workers.py).

Routes (on PATH_INFO):

/pid                    b"<pid>" of the worker that answered
/echo?tag=T             b"T <pid>"
/sleep?ms=M&token=K     writes STATE_DIR/K.started (when a token is given), sleeps
                        M milliseconds (default 50), answers b"slept <pid>"
/hog?mb=N               allocates N MB (default 80), touches every page and keeps it in
                        a module-level list; answers b"<pid> <VmRSS kB>"
"""

import os
import time
from urllib.parse import parse_qs

import ngxtest_settings  # generated per server by the test harness

HOG = []  # memory kept alive on purpose by /hog


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _plain(start_response, body, status="200 OK"):
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = _query(environ)
    pid = os.getpid()

    if path == "/pid":
        return _plain(start_response, str(pid).encode())

    if path == "/echo":
        return _plain(start_response, f"{q.get('tag', '')} {pid}".encode())

    if path == "/sleep":
        if "token" in q:
            marker = os.path.join(ngxtest_settings.STATE_DIR, f"{q['token']}.started")
            with open(marker, "w") as f:
                f.write(str(pid))
        time.sleep(float(q.get("ms", "50")) / 1000.0)  # a known app time, for /status
        return _plain(start_response, f"slept {pid}".encode())

    if path == "/hog":
        mb = int(q.get("mb", "80"))
        # bytes multiplication writes every byte, so the pages are really resident
        HOG.append(b"\x01" * (mb << 20))
        return _plain(start_response, f"{pid} {_rss_kb()}".encode())

    return _plain(start_response, b"no such route " + path.encode(), "404 Not Found")
