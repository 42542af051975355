"""Application errors and WSGI protocol violations (tests/apps/misbehave.py at /bad/).

Before anything was sent the client must get a plain 500 (no traceback
leaked), after the headers went out the response must be visibly cut off;
either way error.log explains what happened and the worker lives on: every
test here checks that the worker pids did not change and that the next
request succeeds.
"""

import re
import uuid
from urllib.parse import quote

import pytest
import requests

from harness import Case, check, explain


@pytest.fixture(autouse=True)
def workers_survive(conformance_server):
    """Around each test: same worker processes before and after, and a normal
    request still works afterwards."""
    before = conformance_server.worker_pids()
    assert len(before) == 2
    yield
    after = conformance_server.worker_pids()
    assert after == before, f"worker processes changed: {sorted(before)} -> {sorted(after)}"
    resp = conformance_server.get("/hello")
    assert resp.status_code == 200, explain(resp, conformance_server)


def assert_plain_500(resp, server, *secrets):
    assert resp.status_code == 500, explain(resp, server)
    assert "Traceback" not in resp.text
    for secret in secrets:
        assert secret not in resp.text, f"{secret!r} leaked into the response body"


def test_exception_before_start_response(conformance_server):
    """An exception raised before start_response gives a 500 without the
    traceback in the body; error.log has the traceback and the message."""
    token = uuid.uuid4().hex
    mark = conformance_server.log_mark()
    resp = conformance_server.get(f"/bad/raise-before?token={token}")
    assert_plain_500(resp, conformance_server, token, "boom-before-start")
    log = conformance_server.wait_log(f"boom-before-start {token}", since=mark)
    assert "Traceback" in log
    assert "RuntimeError" in log


def test_exception_mid_stream_cuts_the_response(conformance_server):
    """An exception after the first chunk was sent ends the response without the
    terminating zero-size chunk; the client can tell it is incomplete."""
    check(conformance_server, Case("GET /bad/raise-midstream",
                                   expect_body=re.compile("^first-part;"),
                                   expect_headers={"Transfer-Encoding": "chunked"},
                                   expect_complete=False,
                                   expect_log=["boom-midstream", "Traceback"]))


def test_exception_mid_stream_with_requests(conformance_server):
    """The same, seen through requests: the 200 status line and the headers
    arrive, the first piece of the body too, then reading the rest raises
    ChunkedEncodingError (the chunked body never got its terminating chunk)."""
    received = bytearray()
    with conformance_server.get("/bad/raise-midstream", stream=True) as resp:
        assert resp.status_code == 200, \
            f"status {resp.status_code} {resp.reason}, headers {dict(resp.headers)}"
        assert resp.headers.get("Transfer-Encoding", "").lower() == "chunked", resp.headers
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for piece in resp.iter_content(chunk_size=None):
                received += piece
            pytest.fail(f"complete response received: {bytes(received)!r}")
    assert bytes(received).startswith(b"first-part;"), bytes(received)


def test_exc_info_after_headers_reraises(conformance_server):
    """start_response(..., exc_info) after the headers were sent must raise
    (PEP 3333); the app's code after that call never runs and the response
    is cut off."""
    resp = conformance_server.raw("GET", "/bad/excinfo-after-headers")
    assert resp.status == 200
    assert b"NOT-RAISED" not in resp.raw, "start_response accepted exc_info after headers"
    assert not resp.complete


def test_str_body_item_is_500(conformance_server):
    """Yielding a str instead of bytes (before anything was sent) gives a 500."""
    assert_plain_500(conformance_server.get("/bad/str-yield"), conformance_server,
                     "a str, not bytes")


def test_returning_none_is_500(conformance_server):
    """An app returning None instead of an iterable gives a 500."""
    assert_plain_500(conformance_server.get("/bad/none-return"), conformance_server)


def test_start_response_twice_without_exc_info_is_500(conformance_server):
    """A second start_response call without exc_info is an error."""
    assert_plain_500(conformance_server.get("/bad/start-twice"), conformance_server,
                     "second start_response was accepted")


@pytest.mark.parametrize("status", ["OK", "20 OK", "2000 Too long", "abc Letters",
                                    "200OK", "", "200 OK\r\nX-Injected: 1"])
def test_malformed_status_is_500(conformance_server, status):
    """A status that is not '<3 digits> <reason>' gives a 500."""
    resp = conformance_server.get("/bad/bad-status?s=" + quote(status, safe=""))
    assert_plain_500(resp, conformance_server, "should not be sent")
    assert "X-Injected" not in resp.headers


def test_int_status_is_500(conformance_server):
    """A status that is not a str gives a 500."""
    assert_plain_500(conformance_server.get("/bad/int-status"), conformance_server)


def test_header_with_crlf_is_500_and_logged(conformance_server):
    """A header value containing CR/LF is refused (500, nothing injected) and
    error.log says why."""
    mark = conformance_server.log_mark()
    resp = conformance_server.get("/bad/crlf-value")
    assert_plain_500(resp, conformance_server, "should not be sent")
    assert "Injected" not in resp.headers
    assert "X-Bad" not in resp.headers
    conformance_server.wait_log(re.compile(r"X-Bad|header", re.IGNORECASE), since=mark)


def test_non_latin1_header_is_500(conformance_server):
    """A header value that cannot be encoded as latin-1 gives a 500."""
    resp = conformance_server.get("/bad/nonlatin1-value")
    assert_plain_500(resp, conformance_server, "should not be sent")
    assert "X-Euro" not in resp.headers


def test_bytes_header_value_is_500(conformance_server):
    """Header values must be str; bytes give a 500."""
    resp = conformance_server.get("/bad/bytes-value")
    assert_plain_500(resp, conformance_server, "should not be sent")
    assert "X-Bytes" not in resp.headers


def test_wsgi_errors_goes_to_error_log(conformance_server, mount):
    """Text written to wsgi.errors (write and writelines) lands in error.log."""
    token = uuid.uuid4().hex
    check(conformance_server, Case(f"GET {mount}/errors?token={token}", expect_body="logged",
                                   expect_log=[f"wsgi-errors-marker {token}",
                                               f"wsgi-errors-lines {token}"]))
