"""An application that waits 1 ms (time.sleep releases the GIL), then answers 10 bytes.

It stands for an application that waits on a database or another service: the
server's concurrency (threads, processes) decides the throughput, not its CPU cost.
"""

import time

BODY = b"slept 1 ms"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    time.sleep(0.001)
    start_response("200 OK", HEADERS)
    return [BODY]
