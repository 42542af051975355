"""Request bodies through wsgi.input.

The conformance app reads the body with one wsgi.input method per request
(``/input?mode=...``) and returns the pieces it got, which are compared with
what the same calls return on an ``io.BytesIO`` of the body.
"""

import hashlib
import http.client
import io
import json
import time

import pytest

from harness import build_request, explain, proc_status_kb, raw_http, reset_peak_rss

BODY = b"line1\nline2 is a bit longer\n\nlast line without newline"


def reference_pieces(mode, n):
    """What a file object returns for the same calls the app makes."""
    f = io.BytesIO(BODY)
    if mode in ("read", "read_cl"):
        return [f.read()]
    if mode == "readline":
        return list(iter(f.readline, b"")) + [b""]
    if mode == "readline_n":
        return list(iter(lambda: f.readline(n), b"")) + [b""]
    if mode in ("readlines", "iter"):
        return f.readlines()
    raise ValueError(mode)


def post_input(server, path, body=BODY, **kwargs):
    resp = server.post(path, data=body, headers={"Content-Type": "application/octet-stream"},
                       **kwargs)
    assert resp.status_code == 200, explain(resp, server)
    result = resp.json()
    assert result["types"] in (["bytes"], []), f"wsgi.input returned {result['types']}"
    return [p.encode("latin-1") for p in result["pieces"]]


@pytest.mark.parametrize("mode,n", [("read_cl", 0), ("readline", 0), ("readline_n", 3),
                                    ("readline_n", 1), ("readlines", 0), ("iter", 0)])
def test_input_methods(conformance_server, mount, mode, n):
    """read(CONTENT_LENGTH), readline(), readline(n), readlines() and iteration
    return exactly what they would on a file holding the body."""
    pieces = post_input(conformance_server, f"{mount}/input?mode={mode}&n={n}")
    assert pieces == reference_pieces(mode, n)


@pytest.mark.parametrize("n", [1, 4, 7, 1000])
def test_read_with_size(conformance_server, mount, n):
    """read(n) returns at most n bytes per call, the whole body in order, then b''."""
    pieces = post_input(conformance_server, f"{mount}/input?mode=read_n&n={n}")
    assert pieces[-1] == b""
    assert all(0 < len(p) <= n for p in pieces[:-1]), [len(p) for p in pieces]
    assert b"".join(pieces) == BODY


def test_read_without_size(conformance_server):
    """read() without an argument returns the whole body (plain app only:
    wsgiref.validate forbids calling read() without a size)."""
    assert post_input(conformance_server, "/raw/input?mode=read") == [BODY]


def test_empty_body(conformance_server, mount):
    """A request without a body reads as b'' immediately."""
    resp = conformance_server.get(f"{mount}/input?mode=read_n&n=100")
    assert resp.status_code == 200, explain(resp, conformance_server)
    assert resp.json()["pieces"] == [""]


def test_chunked_request_body(conformance_server, mount):
    """A body sent with Transfer-Encoding: chunked reaches the app de-chunked,
    and reading to EOF works without CONTENT_LENGTH (wsgi.input_terminated)."""
    request = build_request(
        "POST", f"{mount}/input?mode=read_n&n=5",
        headers=[("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")],
        body=b"5\r\nhello\r\n6\r\n world\r\n1a\r\n and a third, longer chunk\r\n0\r\n\r\n")
    resp = raw_http(conformance_server.port, request)
    assert resp.status == 200, explain(resp, conformance_server)
    pieces = [p.encode("latin-1") for p in json.loads(resp.body)["pieces"]]
    assert b"".join(pieces) == b"hello world and a third, longer chunk"
    assert pieces[-1] == b""


def test_body_over_client_max_body_size_is_413(conformance_server):
    """client_max_body_size 1k in the location rejects a 2 KiB body with 413
    (and still accepts a small one)."""
    small = conformance_server.post("/small/input?mode=read_n&n=100", data=b"s" * 500)
    assert small.status_code == 200, explain(small, conformance_server)
    big = conformance_server.post("/small/input?mode=read_n&n=100", data=b"b" * 2048)
    assert big.status_code == 413, explain(big, conformance_server)


def _stream_upload(port, path, total, chunked, piece=1 << 20):
    """POST ``total`` bytes generated on the fly; returns (status, json, sha256)."""
    digest = hashlib.sha256()

    def body():
        block = bytes(range(256)) * (piece // 256)
        sent = 0
        while sent < total:
            data = block[: min(piece, total - sent)]
            digest.update(data)
            sent += len(data)
            yield data

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": "application/octet-stream"}
        if not chunked:
            headers["Content-Length"] = str(total)
        conn.request("POST", path, body=body(), headers=headers, encode_chunked=chunked)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    return resp.status, payload, digest.hexdigest()


def test_large_upload_is_streamed(conformance_server):
    """A 50 MB upload arrives intact (sha256 computed by the app from read(65536)
    calls) and no worker's peak RSS grows anywhere near the body size: nginx
    spools the body to a temp file and wsgi.input reads it piecewise."""
    srv = conformance_server
    total = 50 * 1024 * 1024
    workers = srv.worker_pids()
    can_reset = all(reset_peak_rss(pid) for pid in workers)
    before = {pid: proc_status_kb(pid, "VmRSS" if can_reset else "VmHWM") for pid in workers}

    status, payload, expected = _stream_upload(srv.port, "/sha256", total, chunked=False)
    assert status == 200, f"{status} {payload[:300]!r}\n{srv.log_tail()}"
    result = json.loads(payload)
    assert result["length"] == total
    assert result["sha256"] == expected
    assert result["content_length"] == str(total)

    growth_kb = {pid: proc_status_kb(pid, "VmHWM") - before[pid] for pid in workers}
    assert max(growth_kb.values()) < 40 * 1024, (
        f"worker peak RSS grew by {growth_kb} kB while receiving a {total >> 20} MB body")


def test_large_chunked_upload(conformance_server, mount):
    """A 5 MB body sent with chunked transfer coding arrives intact."""
    total = 5 * 1024 * 1024 + 123
    status, payload, expected = _stream_upload(conformance_server.port, f"{mount}/sha256",
                                               total, chunked=True, piece=100_000)
    assert status == 200, f"{status} {payload[:300]!r}\n{conformance_server.log_tail()}"
    result = json.loads(payload)
    assert (result["length"], result["sha256"]) == (total, expected)


def test_many_small_requests_in_a_row(conformance_server, mount):
    """Sequential POSTs with bodies keep working (no state leaks between requests)."""
    deadline = time.monotonic() + 20
    for i in range(30):
        body = f"request-{i}\n".encode() * (i + 1)
        resp = conformance_server.post(f"{mount}/input?mode=read_cl", data=body)
        assert resp.status_code == 200, explain(resp, conformance_server)
        assert resp.json()["pieces"] == [body.decode()]
        assert time.monotonic() < deadline, "30 small requests took over 20 s"
