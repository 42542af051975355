"""Process lifecycle: where Python runs, reload (SIGHUP) and graceful quit (SIGQUIT).

Each test owns its nginx. The app is a copy of tests/apps/import_probe.py in
the server's prefix (so a test may edit it); it appends the pid of every
process that imports it to STATE_DIR/imports.log.
"""

import os
import re
import shutil
import socket
import time

from harness import APPS_DIR, RawResponse, build_request, explain, pid_alive, wait_until

LIFECYCLE_CONF = """
    wsgi_python_path @PYLIB@;
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            wsgi_app @PREFIX@/app/import_probe.py;
        }
        location /conformance/ {
            wsgi_app @APPS@/conformance.py;
            wsgi_script_name /conformance;
        }
    }
"""


def start_probe_server(nginx_servers):
    srv = nginx_servers(LIFECYCLE_CONF, name="lifecycle", start=False)
    (srv.prefix / "app").mkdir()
    shutil.copy(APPS_DIR / "import_probe.py", srv.prefix / "app" / "import_probe.py")
    return srv.start()


def importing_pids(srv):
    path = srv.state_dir / "imports.log"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_apps_are_imported_in_workers_only(nginx_servers):
    """Each worker imports the app when it starts (before any request); the
    master never does, and neither does ``nginx -t``."""
    srv = start_probe_server(nginx_servers)
    workers = srv.worker_pids()
    wait_until(lambda: len(importing_pids(srv)) >= 2, 10,
               what="both workers to import the app at start-up")
    imported = importing_pids(srv)
    assert sorted(imported) == sorted(workers), f"importers {imported}, workers {workers}"
    assert srv.master_pid not in imported

    for _ in range(4):
        resp = srv.get("/")
        assert resp.status_code == 200, explain(resp, srv)
        info = resp.json()
        assert info["pid"] in workers and info["pid"] != srv.master_pid
        assert info["ppid"] == srv.master_pid

    rc, output = srv.nginx_t(LIFECYCLE_CONF)
    assert rc == 0, output
    assert sorted(importing_pids(srv)) == sorted(imported), "nginx -t imported the app"


def test_reload_serves_edited_code(nginx_servers):
    """After the script is edited and nginx is reloaded (SIGHUP), new workers
    (new pids, same master) serve the new code; twice in a row."""
    srv = start_probe_server(nginx_servers)
    script = srv.prefix / "app" / "import_probe.py"
    resp = srv.get("/")
    assert resp.status_code == 200, explain(resp, srv)
    assert resp.json()["version"] == "version-1"

    master = srv.master_pid
    for generation in (2, 3):
        old_workers = srv.worker_pids()
        new_version = f"version-{generation}-edited" + "!" * generation
        script.write_text(re.sub(r"(?m)^VERSION = .*$", f"VERSION = {new_version!r}",
                                 script.read_text()))
        # make sure no stale bytecode can be used, even within the same second
        future = time.time() + 10 * generation
        os.utime(script, (future, future))

        new_workers = srv.reload()
        assert srv.master_pid == master and pid_alive(master)
        assert not new_workers & old_workers
        for _ in range(6):
            resp = srv.get("/")
            assert resp.status_code == 200, explain(resp, srv)
            info = resp.json()
            assert info["version"] == new_version
            assert info["pid"] in new_workers
        assert set(importing_pids(srv)) >= new_workers


def test_reload_lets_in_flight_response_finish(nginx_servers):
    """A reload (SIGHUP) while the app is between the two chunks of a streaming
    response lets the old worker finish it.

    The reload is sent as soon as the client has received the first chunk: from
    then on the app sleeps 1.5 s before the second one, so the response is
    certainly in flight (and not yet finished) when the signal goes out."""
    srv = start_probe_server(nginx_servers)
    old_workers = srv.worker_pids()
    received = b""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(build_request("GET", "/conformance/stream"))
        while b"first-chunk" not in received:
            data = sock.recv(65536)
            assert data, f"connection closed before the first chunk: {received!r}"
            received += data
        assert b"second-chunk" not in received, received
        new_workers = srv.reload()  # returns once the old workers have exited
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    assert not new_workers & old_workers
    resp = RawResponse(received, [])
    assert resp.status == 200, explain(resp, srv)
    assert resp.complete and resp.body == b"first-chunksecond-chunk", resp.raw


def test_quit_is_graceful_and_clean(nginx_servers):
    """SIGQUIT makes master and workers exit within 20 s, the pid file is
    removed and the log has no [alert]/[crit]/[emerg] lines."""
    srv = start_probe_server(nginx_servers)
    for _ in range(3):
        assert srv.get("/").status_code == 200
    workers = srv.worker_pids()
    srv.stop()  # raises if it takes longer than 20 s or the log shows problems
    assert not pid_alive(srv.master_pid)
    assert not any(pid_alive(pid) for pid in workers)
    assert not srv.pid_path.exists()
    log = srv.error_log()
    assert "[alert]" not in log and "[crit]" not in log and "exited on signal" not in log
