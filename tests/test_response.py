"""Responses: start_response, write(), body iterables, streaming, HEAD/204/304
and the iterable's close().

Runs against the validated and the plain conformance app (see ``mount``).
"""

import http.client
import socket
import time
import uuid

import pytest

from harness import Case, check, explain, run_cases, wait_until


def close_events(server):
    path = server.state_dir / "close-events.log"
    return path.read_text().splitlines() if path.exists() else []


def events_for(server, token):
    return [line.split()[1] for line in close_events(server) if line.split()[0] == token]


NOLENGTH_BODY = b"a" * 10 + b"b" * 10 + b"c" * 10


def test_content_length_is_passed_through(conformance_server, mount):
    """An app-supplied Content-Length is sent as is, without chunking, along
    with the app's other headers."""
    check(conformance_server, Case(f"GET {mount}/hello", expect_body="hello world", expect_headers={
        "Content-Length": "11", "Transfer-Encoding": None, "Content-Type": "text/plain",
        "X-Probe": "hello-probe"}))


def test_no_content_length_means_chunked(conformance_server, mount):
    """Without Content-Length an HTTP/1.1 response is sent chunked and properly
    terminated."""
    check(conformance_server, Case(f"GET {mount}/nolength", expect_body=NOLENGTH_BODY,
                                   expect_headers={"Transfer-Encoding": "chunked"}))


def test_http10_response_is_not_chunked(conformance_server, mount):
    """HTTP/1.0 clients get the body unchunked (delimited by connection close)."""
    resp = check(conformance_server, Case(f"GET {mount}/nolength HTTP/1.0",
                                          expect_body=NOLENGTH_BODY,
                                          expect_headers={"Transfer-Encoding": None}))
    assert resp.raw_body == NOLENGTH_BODY


def test_write_callable(conformance_server, mount):
    """Data passed to the write() callable returned by start_response comes
    first, followed by the returned iterable."""
    check(conformance_server, Case(f"GET {mount}/write",
                                   expect_body="from-write;second-write;from-iterable"))


def test_streaming_sends_first_chunk_before_generator_finishes(conformance_server, mount):
    """A generator's first chunk reaches the client while the generator is still
    sleeping (1.5 s) before its second chunk: the body is not buffered."""
    resp = conformance_server.raw("GET", mount + "/stream")
    assert resp.status == 200, explain(resp, conformance_server)
    assert resp.body == b"first-chunksecond-chunk"
    first = resp.arrival_time(b"first-chunk")
    second = resp.arrival_time(b"second-chunk")
    assert second - first > 1.0, (
        f"first chunk at {first:.2f}s, second at {second:.2f}s: first chunk was held back")


def test_head_has_headers_but_no_body(conformance_server, mount):
    """HEAD gets the same status and headers as GET, and not a single body byte."""
    run_cases(conformance_server, [
        Case(f"HEAD {mount}/hello", expect_body=b"", expect_headers={
            "Content-Type": "text/plain", "Content-Length": "11", "X-Probe": "hello-probe"}),
        Case(f"HEAD {mount}/nolength", expect_body=b"", expect_headers={
            "Content-Type": "text/plain", "Content-Length": None}),
    ])


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(conformance_server, mount, status):
    """204 and 304 responses carry no body even though the app returned one,
    so the next response on the same keep-alive connection parses cleanly."""
    srv = conformance_server
    raw = check(srv, Case(f"GET {mount}/status/{status}", expect_status=status,
                          expect_headers={"X-Status-Probe": "yes"}))
    assert raw.raw_body == b"", f"{status} response carried a body: {raw.raw_body[:200]!r}"

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", f"{mount}/status/{status}")
        first = conn.getresponse()
        assert first.status == status
        assert first.read() == b""
        conn.request("GET", f"{mount}/hello")
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, b"hello world")
    finally:
        conn.close()


def test_exc_info_replaces_status_before_headers_are_sent(conformance_server, mount):
    """start_response(..., exc_info) before anything was sent replaces the
    status and headers of the first call."""
    check(conformance_server, Case(f"GET {mount}/excinfo", expect_status=503,
                                   expect_body="replaced", expect_headers={"X-Replaced": "yes"}))


def test_close_is_called_after_normal_iteration(conformance_server, mount):
    """The iterable's close() runs after a normal response."""
    token = uuid.uuid4().hex
    resp = conformance_server.get(f"{mount}/close/ok?token={token}")
    assert resp.status_code == 200, explain(resp, conformance_server)
    assert resp.content == b"one;two"
    wait_until(lambda: "close" in events_for(conformance_server, token), 5,
               what="close() of the response iterable")
    assert events_for(conformance_server, token).count("close") == 1


def test_close_is_called_when_iterator_raises(conformance_server, mount):
    """close() also runs when iterating the body raises an exception."""
    token = uuid.uuid4().hex
    mark = conformance_server.log_mark()
    resp = conformance_server.raw("GET", f"{mount}/close/raise?token={token}")
    assert b"one;" in resp.raw
    assert not resp.complete, "a failed body must not look like a complete response"
    wait_until(lambda: "close" in events_for(conformance_server, token), 5,
               what="close() after the iterator raised")
    conformance_server.wait_log(f"iterator failure {token}", since=mark)


def test_close_is_called_when_client_disconnects(conformance_server, mount):
    """When the client goes away mid-stream the server stops iterating soon and
    still calls close()."""
    token = uuid.uuid4().hex
    srv = conformance_server
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(f"GET {mount}/close/slow?token={token} HTTP/1.1\r\n"
                     "Host: 127.0.0.1\r\n\r\n".encode())
        received = b""
        deadline = time.monotonic() + 20
        while len(received) < 100_000 and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            received += data
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
    # socket closed here, with most of the ~13 MB response still unsent
    wait_until(lambda: "close" in events_for(srv, token), 15,
               what="close() after the client disconnected")
    iterations = [e for e in events_for(srv, token) if e.startswith("iter")]
    assert len(iterations) < 150, (
        f"server kept iterating ({len(iterations)} of 199 chunks) after the client left")


def test_connection_reuse_after_responses(conformance_server, mount):
    """Several responses of different shapes on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", conformance_server.port, timeout=30)
    try:
        for path, body in [("/hello", b"hello world"),
                           ("/nolength", b"a" * 10 + b"b" * 10 + b"c" * 10),
                           ("/write", b"from-write;second-write;from-iterable"),
                           ("/hello", b"hello world")]:
            conn.request("GET", mount + path)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, body), path
    finally:
        conn.close()
