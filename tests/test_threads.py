"""The per-worker pool of Python threads (``wsgi_threads``, ``wsgi_queue``,
``wsgi_timeout``), streaming with backpressure and client disconnects.

The app is tests/apps/slow.py; it records what happened to it in files in the
server's state directory, named after a ``token`` query parameter. Most tests
run nginx with a single worker process so that "the worker" and "its threads"
are unambiguous. Timing bounds are wide: they only separate "overlapping" from
"serialized", "answered at once" from "waited for a thread", etc.
"""

import json
import os
import re
import signal
import socket
import threading
import time

import pytest

from harness import (APPS_DIR, build_request, expect_config_ok, expect_emerg, explain, find_line,
                     pid_alive, proc_status_kb, reset_peak_rss, token, wait_until)

SLOW_APP = APPS_DIR / "slow.py"


def threads_conf(main="", location=""):
    """http-block text: ``main`` at http level, slow.py at / plus plain nginx locations."""
    return f"""
    wsgi_python_path @PYLIB@;
    {main}
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            wsgi_app @APPS@/slow.py;
            {location}
        }}
        location = /ok {{ return 200 "ok\\n"; }}
        location = /wsgi-status {{ wsgi_status; }}
        location = /static.txt {{ root @PREFIX@/html; }}
        location = /proxied {{ proxy_pass http://127.0.0.1:@PORT@/ok; }}
    }}
"""


def state_text(srv, tok, suffix):
    """Content of STATE_DIR/<tok>.<suffix>, or None while it does not exist."""
    try:
        return (srv.state_dir / f"{tok}.{suffix}").read_text()
    except FileNotFoundError:
        return None


def wait_state(srv, tok, suffix, timeout, what):
    return wait_until(lambda: state_text(srv, tok, suffix), timeout, what=what)


def only_worker(srv):
    workers = srv.worker_pids()
    assert len(workers) == 1, workers
    return next(iter(workers))


class Background:
    """Run ``srv.raw(...)`` in a thread; ``.result()`` gives (RawResponse, seconds)."""

    def __init__(self, srv, path, timeout=30):
        self.outcome = {}
        self.started = time.monotonic()

        def run():
            try:
                self.outcome["resp"] = srv.raw("GET", path, timeout=timeout)
            except Exception as exc:  # reported by result()
                self.outcome["error"] = exc
            self.outcome["elapsed"] = time.monotonic() - self.started

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def done(self):
        return not self.thread.is_alive()

    def result(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "request still running"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["resp"], self.outcome["elapsed"]


def timed_get(srv, path, timeout=30):
    t0 = time.monotonic()
    resp = srv.raw("GET", path, timeout=timeout)
    return resp, time.monotonic() - t0


def parallel_sleeps(srv, n, seconds):
    """n simultaneous /sleep requests; (responses, wall time for all of them)."""
    t0 = time.monotonic()
    jobs = [Background(srv, f"/sleep?s={seconds}") for _ in range(n)]
    responses = [job.result(60)[0] for job in jobs]
    return responses, time.monotonic() - t0


# --------------------------------------------------------------------------
# servers shared by several tests of this module
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def threaded_server(nginx_module_servers):
    """One worker, four Python threads."""
    return nginx_module_servers(threads_conf("wsgi_threads 4;"), name="threads4",
                                worker_processes=1)


@pytest.fixture(scope="module")
def inline_server(nginx_module_servers):
    """One worker, applications run on the event loop (``wsgi_threads 0``)."""
    return nginx_module_servers(threads_conf("wsgi_threads 0;"), name="inline",
                                worker_processes=1)


# --------------------------------------------------------------------------
# 1. concurrency, 8. wsgi.multithread
# --------------------------------------------------------------------------

def test_sleeping_requests_overlap_with_threads(threaded_server):
    """With 4 threads in one worker, 4 requests that each sleep 1 s are served
    at the same time: all done in well under 4 s."""
    responses, elapsed = parallel_sleeps(threaded_server, 4, 1)
    for resp in responses:
        assert resp.status == 200 and resp.body == b"slept 1", explain(resp, threaded_server)
    assert elapsed < 2.5, f"4 x 1 s sleeps took {elapsed:.2f}s with wsgi_threads 4"


def test_sleeping_requests_serialize_inline(inline_server):
    """The control: with ``wsgi_threads 0`` the same 4 requests run one after
    the other on the worker's event loop (>= 3.5 s)."""
    responses, elapsed = parallel_sleeps(inline_server, 4, 1)
    for resp in responses:
        assert resp.status == 200 and resp.body == b"slept 1", explain(resp, inline_server)
    assert elapsed >= 3.5, f"4 x 1 s sleeps took only {elapsed:.2f}s with wsgi_threads 0"


def test_wsgi_multithread_flag(threaded_server, inline_server):
    """wsgi.multithread is True with a thread pool and False inline."""
    for srv, expected in ((threaded_server, True), (inline_server, False)):
        resp = srv.get("/multithread")
        assert resp.status_code == 200, explain(resp, srv)
        info = json.loads(resp.text)
        assert info["wsgi.multithread"] is expected, (srv, info)
        assert info["wsgi.run_once"] is False, (srv, info)


# --------------------------------------------------------------------------
# 2. the event loop stays free while all threads are busy
# --------------------------------------------------------------------------

def test_event_loop_serves_while_threads_are_busy(nginx_servers):
    """Both Python threads of the only worker sleep for 3 s; meanwhile nginx
    still answers a ``return 200`` location, a static file and a proxied request
    (which needs the same worker to accept a new connection) within 1 s each.
    A further WSGI request has to wait for a thread."""
    srv = nginx_servers(threads_conf("wsgi_threads 2;"), name="busy", worker_processes=1,
                        start=False)
    (srv.prefix / "html" / "static.txt").write_text("static file\n")
    srv.start()

    tokens = [token(), token()]
    sleepers = [Background(srv, f"/sleep?s=3&token={t}") for t in tokens]
    for t in tokens:
        wait_state(srv, t, "started", 5, f"sleeper {t} to start running")
    queued = Background(srv, "/quick")

    checks = {"/ok": b"ok\n", "/static.txt": b"static file\n", "/proxied": b"ok\n"}
    for path, body in checks.items():
        resp, elapsed = timed_get(srv, path, timeout=10)
        assert resp.status == 200 and resp.body == body, explain(resp, srv)
        assert elapsed < 1.0, f"{path} took {elapsed:.2f}s while the threads were busy"
    assert all(not s.done() for s in sleepers), "the sleepers finished too early for the test"

    resp, elapsed = queued.result()
    assert resp.status == 200 and resp.body == b"quick", explain(resp, srv)
    assert elapsed > 1.0, f"/quick took {elapsed:.2f}s although both threads were busy"
    for sleeper in sleepers:
        resp, _ = sleeper.result()
        assert resp.status == 200 and resp.body == b"slept 3", explain(resp, srv)


# --------------------------------------------------------------------------
# 3. slow reader: backpressure keeps the producer (and memory) in check
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["threaded", "inline"])
def test_slow_reader_bounds_memory(nginx_servers, mode):
    """The app offers 200 MB in 64 KiB pieces; the client reads 64 KiB every
    0.1 s for 3 s through a small receive buffer. The producer must wait for
    the client: it produces only a few MB more than the client read and the
    worker's memory grows by far less than the 200 MB on offer. When the client
    goes away, the iterable is closed. Inline (``wsgi_threads 0``) the body is
    paused on the event loop and resumed from write events."""
    main = "wsgi_threads 0;" if mode == "inline" else ""
    srv = nginx_servers(threads_conf(main), name="slowreader", worker_processes=1)
    worker = only_worker(srv)
    assert srv.get("/quick").status_code == 200  # warm up the thread pool
    base_rss = proc_status_kb(worker, "VmRSS")
    peak_reset = reset_peak_rss(worker)

    tok = token()
    total = 200 * 1024 * 1024
    chunk = 64 * 1024
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(10)
    received = 0
    max_rss = base_rss
    try:
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(build_request("GET", f"/stream?token={tok}&total={total}&chunk={chunk}"))
        head = b""
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            data = sock.recv(chunk)
            assert data, f"server closed the connection after {received} bytes"
            if not head:
                head = data[:data.find(b"\r\n")]
                assert head.startswith(b"HTTP/1.1 200"), data[:300]
            received += len(data)
            max_rss = max(max_rss, proc_status_kb(worker, "VmRSS"))
            time.sleep(0.1)  # the behaviour under test: a client that reads slowly

        produced = int(state_text(srv, tok, "count") or 0)
        peak = proc_status_kb(worker, "VmHWM") if peak_reset else max_rss
        rss_growth_mb = (max(peak, max_rss) - base_rss) / 1024
        produced_mb = produced * chunk / 2**20
        received_mb = received / 2**20
        summary = (f"client read {received_mb:.1f} MB, app produced {produced} pieces "
                   f"({produced_mb:.1f} MB), worker memory grew by {rss_growth_mb:.1f} MB")
        assert produced >= 2, "the app hardly produced anything: " + summary
        assert produced_mb < 32, "the producer did not wait for the client: " + summary
        assert produced_mb - received_mb < 24, "too much data held in flight: " + summary
        assert rss_growth_mb < 64, "worker memory grew too much: " + summary
    finally:
        sock.close()

    closed = wait_state(srv, tok, "closed", 5, "close() after the client went away")
    assert closed.startswith("closed after"), closed
    assert proc_status_kb(worker, "VmRSS") - base_rss < 64 * 1024
    resp = srv.get("/quick", timeout=10)
    assert resp.status_code == 200, explain(resp, srv)


def pieces_body(n, size):
    """What /pieces?n=N&size=S sends."""
    return b"".join(bytes([65 + i % 26]) * size for i in range(n))


PIECES_CONF = threads_conf(location="""
            location /gz/ { wsgi_app @APPS@/slow.py; wsgi_script_name /gz; gzip on; gzip_types text/plain;
                            gzip_min_length 0; }
            location /sub/ { wsgi_app @APPS@/slow.py; wsgi_script_name /sub;
                             sub_filter_types text/plain;
                             sub_filter AAAA aaaa; sub_filter CC cc;
                             sub_filter_once off; }
            location /slow/ { wsgi_app @APPS@/slow.py; wsgi_script_name /slow;
                              limit_rate 8m; }""")


@pytest.mark.parametrize("where,shape", [
    ("plain", "generator"), ("plain", "list"), ("gzip", "generator"), ("gzip", "list"),
    ("limit_rate", "generator"), ("limit_rate", "list"), ("sub_filter", "generator"),
    ("sub_filter", "list")])
def test_large_pieces_arrive_intact(nginx_module_servers, where, shape):
    """Long body pieces go to nginx without a copy (the buffers point into the
    application's bytes objects): whatever the filters in front do with them
    (gzip reads them, sub_filter sends parts of them as buffers of its own,
    limit_rate sends them over many write events), the client gets exactly the
    application's bytes, and the objects outlive their buffers. (sub_filter
    replaces within pieces only: every piece ends in a flush, and nginx ends a
    partial match at a flush.)"""
    srv = nginx_module_servers(PIECES_CONF, name="pieces", worker_processes=1)
    n, size = 6, 300 * 1024
    prefix = {"plain": "", "gzip": "/gz", "sub_filter": "/sub", "limit_rate": "/slow"}[where]
    listed = "&list=1" if shape == "list" else ""
    path = f"{prefix}/pieces?n={n}&size={size}{listed}"
    expected = pieces_body(n, size)
    if where == "sub_filter":
        expected = expected.replace(b"A", b"a").replace(b"C", b"c")
    headers = {"Accept-Encoding": "gzip"} if where == "gzip" else {"Accept-Encoding": "identity"}
    resp = srv.get(path, headers=headers, timeout=30)
    assert resp.status_code == 200, explain(resp, srv)
    if where == "gzip":
        assert resp.headers.get("Content-Encoding") == "gzip", resp.headers
    body = resp.content  # requests decodes gzip
    assert len(body) == len(expected), f"{len(body)} bytes, expected {len(expected)}"
    assert body == expected, "body differs from the application's"
    srv.check_log()


def test_sent_pieces_are_released_during_the_response(nginx_servers):
    """A 512 MiB response in 1 MiB pieces, each a new bytes object, read at full
    speed: every piece is released once nginx has sent it, not at the end of the
    request, so the worker's memory grows by a few pieces, not by the body."""
    srv = nginx_servers(threads_conf(), name="release", worker_processes=1)
    worker = only_worker(srv)
    assert srv.get("/quick").status_code == 200  # warm up the thread pool
    base_rss = proc_status_kb(worker, "VmRSS")
    peak_reset = reset_peak_rss(worker)
    n, size = 512, 1024 * 1024
    received = 0
    max_rss = base_rss
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(build_request("GET", f"/pieces?n={n}&size={size}"))
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            received += len(data)
            if received % (16 << 20) < len(data):
                max_rss = max(max_rss, proc_status_kb(worker, "VmRSS"))
    peak = proc_status_kb(worker, "VmHWM") if peak_reset else max_rss
    growth_mb = (max(peak, max_rss) - base_rss) / 1024
    assert received > n * size, f"only {received} bytes arrived"
    assert growth_mb < 96, f"worker memory grew by {growth_mb:.0f} MB for a {n} MiB body"
    srv.check_log()


# --------------------------------------------------------------------------
# 4. client disconnect: close() is called and the thread returns to the pool
# --------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["ticker", "stream"])
def test_disconnect_closes_iterable_and_frees_thread(nginx_servers, route):
    """The client reads the first piece of a long response and hangs up. Within
    5 s the app's close() has run, and the worker's only Python thread serves
    the next request. ``ticker`` sends 1 KiB every 0.1 s for 20 s; ``stream``
    is a fast producer held back by backpressure (200 MB offered)."""
    srv = nginx_servers(threads_conf("wsgi_threads 1;"), name=f"disconnect-{route}",
                        worker_processes=1)
    workers = srv.worker_pids()
    tok = token()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(build_request("GET", f"/{route}?token={tok}"))
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + 1024:
            more = sock.recv(65536)
            assert more, f"connection closed early: {data[:300]!r}"
            data += more
        assert data.startswith(b"HTTP/1.1 200"), data[:300]
        t_close = time.monotonic()

    closed = wait_state(srv, tok, "closed", 5, "close() after the client disconnected")
    assert closed.startswith("closed after"), closed
    resp, _ = timed_get(srv, "/quick", timeout=10)
    assert resp.status == 200 and resp.body == b"quick", explain(resp, srv)
    assert time.monotonic() - t_close < 8, "the single thread was not free again in time"
    assert srv.worker_pids() == workers
    resp = srv.get("/ok")
    assert resp.status_code == 200, explain(resp, srv)


# --------------------------------------------------------------------------
# 5. full queue -> 503
# --------------------------------------------------------------------------

def test_full_queue_answers_503_at_once(nginx_servers):
    """One thread, queue of one: a request sleeping 2 s holds the thread, a
    second one waits in the queue, a third gets 503 at once and error.log says
    "wsgi queue is full". The first two are served normally."""
    srv = nginx_servers(threads_conf("wsgi_threads 1;\n    wsgi_queue 1;"), name="queue",
                        worker_processes=1)
    tok = token()
    mark = srv.log_mark()
    first = Background(srv, f"/sleep?s=2&token={tok}")
    wait_state(srv, tok, "started", 5, "the first request to run")
    second = Background(srv, "/sleep?s=0.2")
    wait_until(lambda: srv.get("/wsgi-status").json()["workers"][0]["queue"] == 1, 5,
               what="the second request waiting in the queue")
    assert not second.done()

    resp, elapsed = timed_get(srv, "/sleep?s=0.1", timeout=10)
    assert resp.status == 503, explain(resp, srv)
    assert elapsed < 1.0, f"the 503 took {elapsed:.2f}s"
    srv.wait_log("wsgi queue is full", since=mark)

    for job, body in ((first, b"slept 2"), (second, b"slept 0.2")):
        resp, _ = job.result()
        assert resp.status == 200 and resp.body == body, explain(resp, srv)
    resp = srv.get("/quick")
    assert resp.status_code == 200, explain(resp, srv)


# --------------------------------------------------------------------------
# 6. wsgi_timeout
# --------------------------------------------------------------------------

TIMEOUT_CONF = threads_conf("wsgi_threads 1;", location="wsgi_timeout 1s;")


@pytest.fixture(scope="module")
def timeout_server(nginx_module_servers):
    """One worker, one thread, ``wsgi_timeout 1s`` on the app."""
    return nginx_module_servers(TIMEOUT_CONF, name="timeout", worker_processes=1)


def test_timeout_gives_504_and_interrupts_app(timeout_server):
    """The app sleeps in 0.1 s steps for 10 s: after 1 s the client gets 504,
    error.log shows the timeout and the app's stack (pointing at its sleep
    line), the app sees a ``_ngx_wsgi.RequestTimeout`` and the thread is free
    for the next request."""
    srv = timeout_server
    tok = token()
    mark = srv.log_mark()
    resp, elapsed = timed_get(srv, f"/timeout?token={tok}", timeout=15)
    assert resp.status == 504, explain(resp, srv)
    assert elapsed < 3.0, f"504 after {elapsed:.2f}s"

    log = srv.wait_log("the application's stack:", since=mark)
    assert "timed out after" in log, log
    sleep_line = find_line(SLOW_APP, "SLEEP-LINE")
    # the stack is the block of lines after the marker, up to the next log entry
    after = log[log.index("the application's stack:"):].split("\n", 1)[1]
    stack = re.split(r"(?m)^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", after)[0]
    assert f'File "{SLOW_APP}", line {sleep_line}' in stack, log[-3000:]

    seen = wait_state(srv, tok, "interrupted", 5, "the app to see RequestTimeout")
    assert seen.startswith("_ngx_wsgi.RequestTimeout "), seen
    assert int(seen.split()[1]) < 50, f"interrupted too late: {seen}"

    resp, elapsed = timed_get(srv, "/quick", timeout=10)
    assert resp.status == 200 and resp.body == b"quick", explain(resp, srv)
    assert elapsed < 3.0, f"the next request took {elapsed:.2f}s"


def test_timeout_after_headers_cuts_response(timeout_server):
    """When the headers and a first piece were already sent, a timeout ends
    the response without its terminating chunk, and the app is interrupted."""
    srv = timeout_server
    tok = token()
    resp, elapsed = timed_get(srv, f"/late-timeout?token={tok}", timeout=15)
    assert resp.status == 200, explain(resp, srv)
    assert resp.chunked and resp.body == b"first", resp.raw[:500]
    assert not resp.complete, f"cut response looks complete: {resp.raw_body!r}"
    assert elapsed < 3.0, f"response cut after {elapsed:.2f}s"
    seen = wait_state(srv, tok, "interrupted", 5, "the app to see RequestTimeout")
    assert seen.startswith("_ngx_wsgi.RequestTimeout "), seen
    resp = srv.get("/quick", timeout=10)
    assert resp.status_code == 200, explain(resp, srv)


# --------------------------------------------------------------------------
# 7. graceful quit / reload with a request in flight
# --------------------------------------------------------------------------

@pytest.mark.parametrize("sig", ["SIGQUIT", "SIGHUP"])
def test_in_flight_request_survives_quit_and_reload(nginx_servers, sig):
    """A request sleeping 2 s is running in a Python thread when the master
    gets SIGQUIT (graceful stop) or SIGHUP (reload): it completes with 200 and
    its full body, the old worker exits, and the log stays free of
    [alert]/[crit] lines."""
    srv = nginx_servers(threads_conf("wsgi_threads 2;"), name=f"inflight-{sig}",
                        worker_processes=1)
    old_worker = only_worker(srv)
    master = srv.master_pid
    tok = token()
    job = Background(srv, f"/sleep?s=2&token={tok}")
    wait_state(srv, tok, "started", 5, "the request to start running")
    os.kill(master, getattr(signal, sig))

    resp, elapsed = job.result()
    assert resp.status == 200 and resp.body == b"slept 2", explain(resp, srv)
    assert resp.complete
    wait_until(lambda: not pid_alive(old_worker), 15, what="the old worker to exit")
    if sig == "SIGQUIT":
        wait_until(lambda: not pid_alive(master), 15, what="the master to exit")
        assert not srv.pid_path.exists()
    else:
        assert pid_alive(master)
        new = wait_until(lambda: srv.worker_pids() - {old_worker}, 15, what="a new worker")
        assert len(new) == 1
        resp = srv.get("/quick")
        assert resp.status_code == 200, explain(resp, srv)
    srv.stop()  # checks the log for [alert]/[crit]/[emerg] and crashes
    log = srv.error_log()
    assert not re.search(r"\[(alert|crit)\]", log), log


# --------------------------------------------------------------------------
# 9. configuration errors
# --------------------------------------------------------------------------

@pytest.mark.parametrize("main, location, needles", [
    ("wsgi_threads abc;", "", ('"wsgi_threads"', "abc")),
    ("wsgi_queue lots;", "", ('"wsgi_queue"', "lots")),
    ("", "wsgi_timeout 5x;", ('"wsgi_timeout"', "5x")),
    ("", "wsgi_threads 4;", ('"wsgi_threads" directive is not allowed here',)),
], ids=["threads-abc", "queue-lots", "timeout-5x", "threads-in-location"])
def test_bad_thread_directives_are_rejected(checker, main, location, needles):
    """``nginx -t`` fails with an [emerg] line naming the directive, and
    pointing at the file and line."""
    expect_emerg(checker, threads_conf(main, location), *needles, at=(main or location).rstrip(";"))


def test_good_thread_directives_pass(checker):
    expect_config_ok(checker, threads_conf("wsgi_threads 0;\n    wsgi_queue 10;",
                                           "wsgi_timeout 0;"))
    expect_config_ok(checker, threads_conf("wsgi_threads 8;\n    wsgi_timeout 30s;",
                                           "wsgi_timeout 1m;"))
