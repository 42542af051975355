"""The WSGI environ handed to applications (PEP 3333, "environ Variables").

Every test runs twice: against tests/apps/conformance.py wrapped in
``wsgiref.validate.validator`` (mount '') and against the plain app (mount
'/raw', which also shows ``wsgi_script_name``). The app answers with a JSON
description of the environ: for every key its type and, for str values, the
value itself.
"""

import json

import pytest

from harness import APPS_DIR, explain


def fetch_environ(server, mount, path="/environ", method="GET", **kwargs):
    resp = server.request(method, mount + path, **kwargs)
    assert resp.status_code == 200, explain(resp, server)
    return resp.json()


def value(env, key):
    entry = env["keys"].get(key)
    assert entry is not None, f"{key} missing from environ (keys: {sorted(env['keys'])})"
    assert entry["type"] == "str", f"{key} is {entry['type']}, not str"
    return entry["value"]


def test_paths_are_decoded_and_query_string_is_raw(conformance_server, mount):
    """SCRIPT_NAME is the mount point, PATH_INFO the percent-decoded rest of the
    URI with non-ASCII bytes as latin-1 characters, QUERY_STRING and
    REQUEST_URI exactly as sent."""
    env = fetch_environ(conformance_server, mount, "/environ/caf%C3%A9/a%20b?x=%20y&z=%C3%A9&flag")
    assert value(env, "REQUEST_METHOD") == "GET"
    assert value(env, "SCRIPT_NAME") == mount
    assert value(env, "PATH_INFO") == "/environ/caf\xc3\xa9/a b"
    assert value(env, "QUERY_STRING") == "x=%20y&z=%C3%A9&flag"
    assert value(env, "REQUEST_URI") == mount + "/environ/caf%C3%A9/a%20b?x=%20y&z=%C3%A9&flag"


def test_empty_query_string(conformance_server, mount):
    """Without '?' QUERY_STRING is present and empty (or at least never None)."""
    env = fetch_environ(conformance_server, mount)
    assert env["keys"].get("QUERY_STRING", {"type": "str", "value": ""})["value"] == ""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_request_method(conformance_server, mount, method):
    """REQUEST_METHOD carries the request's method."""
    env = fetch_environ(conformance_server, mount, method=method, data=b"x")
    assert value(env, "REQUEST_METHOD") == method


def test_content_type_and_length(conformance_server, mount):
    """Content-Type / Content-Length appear as CONTENT_TYPE / CONTENT_LENGTH and
    never as HTTP_CONTENT_TYPE / HTTP_CONTENT_LENGTH."""
    env = fetch_environ(conformance_server, mount, method="POST", data=b"abc",
                        headers={"Content-Type": "text/plain; charset=utf-8"})
    assert value(env, "CONTENT_TYPE") == "text/plain; charset=utf-8"
    assert value(env, "CONTENT_LENGTH") == "3"
    assert "HTTP_CONTENT_TYPE" not in env["keys"]
    assert "HTTP_CONTENT_LENGTH" not in env["keys"]


def test_server_and_remote_address(conformance_server, mount):
    """SERVER_NAME/SERVER_PORT describe the listening server, REMOTE_ADDR and
    REMOTE_PORT the client socket; ports are decimal strings."""
    srv = conformance_server
    resp = srv.raw("GET", mount + "/environ")
    assert resp.status == 200, explain(resp, srv)
    env = json.loads(resp.body)
    assert value(env, "SERVER_NAME") in ("localhost", "127.0.0.1")
    assert value(env, "SERVER_PORT") == str(srv.port)
    assert value(env, "REMOTE_ADDR") == "127.0.0.1"
    remote_port = value(env, "REMOTE_PORT")
    assert remote_port.isdigit()
    assert remote_port == str(resp.local_port)
    assert value(env, "SERVER_PROTOCOL") == "HTTP/1.1"


def test_server_protocol_http10(conformance_server, mount):
    """An HTTP/1.0 request shows SERVER_PROTOCOL 'HTTP/1.0'."""
    resp = conformance_server.raw("GET", mount + "/environ", version="HTTP/1.0")
    assert resp.status == 200, explain(resp, conformance_server)
    env = json.loads(resp.body)
    assert value(env, "SERVER_PROTOCOL") == "HTTP/1.0"


def test_http_headers(conformance_server, mount):
    """Each request header becomes HTTP_<NAME>; repeated headers are joined
    with ', ', repeated Cookie headers with '; '."""
    resp = conformance_server.raw("GET", mount + "/environ", headers=[
        ("X-Custom-Header", "custom value"),
        ("X-Multi", "first"),
        ("X-Multi", "second"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("User-Agent", "ngx-wsgi-tests/1.0"),
        ("Accept", "text/plain"),
    ])
    assert resp.status == 200, explain(resp, conformance_server)
    env = json.loads(resp.body)
    assert value(env, "HTTP_X_CUSTOM_HEADER") == "custom value"
    assert value(env, "HTTP_X_MULTI") == "first, second"
    assert value(env, "HTTP_COOKIE") == "a=1; b=2"
    assert value(env, "HTTP_USER_AGENT") == "ngx-wsgi-tests/1.0"
    assert value(env, "HTTP_ACCEPT") == "text/plain"
    assert value(env, "HTTP_HOST") == "127.0.0.1"


def test_url_scheme_is_http(conformance_server, mount):
    """Over plain HTTP wsgi.url_scheme is 'http' and HTTPS is absent or 'off'."""
    env = fetch_environ(conformance_server, mount)
    assert env["keys"]["wsgi.url_scheme"] == {"key_type": "str", "type": "str", "value": "http"}
    if "HTTPS" in env["keys"]:
        assert value(env, "HTTPS") == "off"


def test_wsgi_keys(conformance_server, mount):
    """All wsgi.* keys of PEP 3333 are present with the right types and values."""
    env = fetch_environ(conformance_server, mount)
    keys = env["keys"]
    assert keys["wsgi.version"]["type"] == "tuple"
    assert keys["wsgi.version"]["repr"] == "(1, 0)"
    for flag in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
                 "wsgi.input_terminated"):
        assert keys[flag]["type"] == "bool", f"{flag}: {keys[flag]}"
    assert keys["wsgi.run_once"]["repr"] == "False"
    assert keys["wsgi.input_terminated"]["repr"] == "True"
    # two worker processes serve the app
    assert keys["wsgi.multiprocess"]["repr"] == "True"
    assert "wsgi.input" in keys and "wsgi.errors" in keys
    assert env["input_methods"] == ["read", "readline", "readlines", "__iter__"]
    assert env["errors_methods"] == ["write", "writelines", "flush"]
    assert env["file_wrapper_callable"] is True


def test_all_cgi_values_are_native_strings(conformance_server, mount):
    """Keys are str; every CGI-style (undotted) value is a str holding only
    latin-1 characters ("native strings")."""
    env = fetch_environ(conformance_server, mount, "/environ/caf%C3%A9",
                        headers={"X-Latin": "caf\xe9".encode("latin-1")})
    for key, entry in env["keys"].items():
        assert entry["key_type"] == "str", f"key {key!r} is {entry['key_type']}"
        if "." in key:
            continue  # wsgi.* and other extension objects
        assert entry["type"] == "str", f"{key} is {entry['type']}: {entry}"
        assert all(ord(c) < 256 for c in entry["value"]), f"{key} not latin-1: {entry['value']!r}"
    assert value(env, "HTTP_X_LATIN") == "caf\xe9"


def test_file_wrapper_serves_file(conformance_server, mount):
    """wsgi.file_wrapper(open(file), blksize) sends the file's bytes."""
    resp = conformance_server.get(mount + "/filewrapper")
    assert resp.status_code == 200, explain(resp, conformance_server)
    assert resp.content == (APPS_DIR / "conformance.py").read_bytes()
