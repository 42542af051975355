"""wsgi.file_wrapper as an nginx file buffer: a regular file behind the wrapper goes to
nginx as an in_file buffer (sendfile, ranges, gzip through the copy filter), the Python
thread is free as soon as the wrapper is returned, and the worker's memory does not grow
with the file. Objects without a file descriptor are iterated in blocks."""

import gzip
import os
import socket
import time

import pytest
import requests

from harness import build_request, explain, proc_status_kb, wait_until

MODES = {"threaded": "wsgi_threads 1;", "inline": "wsgi_threads 0;"}


def conf(mode):
    return f"""
    {MODES[mode]}
    server {{
        listen 127.0.0.1:@PORT@;
        sendfile on;
        location / {{ wsgi_app @APPS@/files.py; }}
        location = /status {{ wsgi_status; }}
        location /aio/ {{
            sendfile off;
            aio threads;
            output_buffers 2 32k;
            wsgi_app @APPS@/files.py;
            wsgi_script_name /aio;
        }}
        location /direct/ {{
            directio 64k;
            output_buffers 2 64k;
            wsgi_app @APPS@/files.py;
            wsgi_script_name /direct;
        }}
        location /gz/ {{
            gzip on; gzip_types text/plain; gzip_min_length 0;
            wsgi_app @APPS@/files.py;
            wsgi_script_name /gz;
        }}
    }}
"""


@pytest.fixture(scope="module", params=list(MODES))
def files(request, nginx_module_servers, tmp_path_factory):
    srv = nginx_module_servers(conf(request.param), name=f"files-{request.param}",
                               worker_processes=1)
    data_dir = tmp_path_factory.mktemp("files-data")
    small = data_dir / "small.txt"
    small.write_bytes(b"".join(b"line %04d of the file\n" % i for i in range(2000)))
    srv.small = small
    srv.big = data_dir / "big.bin"
    with open(srv.big, "wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: costs no disk
    srv.mode = request.param
    return srv


def test_whole_file_with_length(files):
    resp = files.get(f"/file?path={files.small}")
    assert resp.status_code == 200, explain(resp, files)
    assert resp.content == files.small.read_bytes()
    assert resp.headers["Content-Length"] == str(files.small.stat().st_size)


def test_body_starts_at_the_objects_position(files):
    resp = files.get(f"/file?path={files.small}&skip=7")
    assert resp.status_code == 200, explain(resp, files)
    assert resp.content == files.small.read_bytes()[7:]


def test_application_content_length_is_honoured(files):
    resp = files.get(f"/file?path={files.small}&cl=25")
    assert resp.status_code == 200, explain(resp, files)
    assert resp.content == files.small.read_bytes()[:25]


def test_head_sends_no_body(files):
    resp = files.raw("HEAD", f"/file?path={files.small}")
    assert resp.status == 200 and resp.raw_body == b""
    assert resp.header("Content-Length") == str(files.small.stat().st_size)


def test_range_is_answered_by_nginx(files):
    data = files.small.read_bytes()
    resp = files.get(f"/file?path={files.small}", headers={"Range": "bytes=10-19"})
    assert resp.status_code == 206, explain(resp, files)
    assert resp.content == data[10:20]
    assert resp.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    resp = files.get(f"/file?path={files.small}", headers={"Range": f"bytes={len(data) + 10}-"})
    assert resp.status_code == 416, explain(resp, files)


def test_if_range(files):
    data = files.small.read_bytes()
    first = files.get(f"/file?path={files.small}&lastmod=1")
    lastmod = first.headers["Last-Modified"]
    resp = files.get(f"/file?path={files.small}&lastmod=1",
                     headers={"Range": "bytes=0-4", "If-Range": lastmod})
    assert resp.status_code == 206 and resp.content == data[:5], explain(resp, files)
    resp = files.get(f"/file?path={files.small}&lastmod=1",
                     headers={"Range": "bytes=0-4", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert resp.status_code == 200 and resp.content == data, explain(resp, files)


def test_gzip_reads_the_file_through_nginx(files):
    resp = files.raw("GET", f"/gz/file?path={files.small}&type=text/plain",
                     headers=[("Accept-Encoding", "gzip")])
    assert resp.status == 200, explain(resp, files)
    assert resp.header("Content-Encoding") == "gzip"
    assert gzip.decompress(resp.body) == files.small.read_bytes()


def test_aio_threads_and_output_buffers_read_the_file(files):
    """With sendfile off, nginx reads the file itself, in its thread pool (aio threads),
    through output_buffers."""
    mid = files.prefix / "mid.bin"
    mid.write_bytes(bytes(range(256)) * 8000)
    resp = files.get(f"/aio/file?path={mid}")
    assert resp.status_code == 200, explain(resp, files)
    assert resp.content == mid.read_bytes()


def test_directio_reads_the_file(files):
    """A file past `directio` is read by nginx with O_DIRECT (aligned output buffers)."""
    mid = files.prefix / "direct.bin"
    mid.write_bytes(bytes(range(256)) * 4099)
    resp = files.get(f"/direct/file?path={mid}&skip=3")
    assert resp.status_code == 200, explain(resp, files)
    assert resp.content == mid.read_bytes()[3:]


def open_flags(pid, path):
    """The open flags of `pid`'s descriptors on `path` (from /proc/PID/fdinfo)."""
    flags = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                    if line.startswith("flags:"):
                        flags.append(int(line.split()[1], 8))
        except OSError:
            continue
    return flags


def slow_client(srv, path):
    """A socket with a small receive buffer that has sent GET `path` and reads nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(10)
    try:
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(build_request("GET", path))
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.mark.parametrize("prefix, direct", [("/direct", True), ("", False)])
def test_directio_is_set_on_large_files(files, prefix, direct):
    """While nginx sends a file past `directio`, its descriptor has O_DIRECT (and not
    without the directive)."""
    worker = next(iter(files.worker_pids()))
    sock = slow_client(files, f"{prefix}/file?path={files.big}")
    try:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        flags = wait_until(lambda: open_flags(worker, files.big), 5, what="the open file")
        assert all(bool(f & os.O_DIRECT) == direct for f in flags), [oct(f) for f in flags]
    finally:
        sock.close()


def test_object_without_fileno_is_iterated(files):
    resp = files.get("/bytesio?n=123457")
    assert resp.status_code == 200, explain(resp, files)
    assert resp.content == (bytes(range(256)) * 483)[:123457]


def test_thread_free_and_memory_flat_while_a_slow_client_gets_a_big_file(files):
    """A 200 MB file to a client that reads nothing: the worker's memory grows by far less
    than the file and (threaded, with one Python thread) the thread is free for the next
    request at once, because nginx sends the file itself."""
    worker = next(iter(files.worker_pids()))
    assert files.get("/quick").status_code == 200
    base = proc_status_kb(worker, "VmRSS")
    sock = slow_client(files, f"/file?path={files.big}")
    try:
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        # The one Python thread is free: another request is answered while the first waits.
        t0 = time.monotonic()
        quick = requests.get(files.url("/quick"), timeout=10)
        assert quick.status_code == 200 and quick.content == b"quick"
        assert time.monotonic() - t0 < 5
        grown_mb = (proc_status_kb(worker, "VmRSS") - base) / 1024
        assert grown_mb < 8, f"worker memory grew by {grown_mb:.1f} MB sending a 200 MB file"
    finally:
        sock.close()


@pytest.mark.parametrize("path", ["/file?path={big}", "/big-list?n=16000000"])
def test_client_gone_while_output_waits_ends_the_request(files, path):
    """The application has produced the whole response (its thread is done) while nginx
    still waits for the client; the client then goes away. The request must end at once
    (in_flight back to 0), not wait for ever, which would also hold up a graceful quit."""
    sock = slow_client(files, path.format(big=files.big))
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()

    def idle():
        workers = requests.get(files.url("/status"), timeout=5).json()["workers"]
        # The status request itself is not a WSGI request: nothing may be in flight.
        return all(w["in_flight"] == 0 for w in workers)

    wait_until(idle, 10, what="the abandoned request to end")
