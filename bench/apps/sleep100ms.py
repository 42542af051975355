"""An application that waits 100 ms (time.sleep releases the GIL), then answers 12 bytes.

The mixed workload keeps every Python thread of the module in it while it measures a plain
nginx location of the same server: long enough that each thread is asleep nearly all the
time, so its throughput × 0.1 s is the number of threads it keeps busy.
"""

import time

BODY = b"slept 100 ms"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    time.sleep(0.1)
    start_response("200 OK", HEADERS)
    return [BODY]
