"""HTTPS: a request that arrived over TLS says so in the environ (PEP 3333
``wsgi.url_scheme``, and CGI's ``HTTPS=on``); the same app over plain HTTP does not."""

import subprocess
import warnings

import pytest
import requests

from harness import DEFAULT_TIMEOUT, explain

TLS_CONF = """
    wsgi_python_path @PYLIB@;
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name localhost;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        location / {
            wsgi_app @APPS@/conformance.py;
        }
    }
"""


@pytest.fixture(scope="module")
def tls_server(nginx_module_servers, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls-cert")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    conf = TLS_CONF.replace("@CERT@", str(cert)).replace("@KEY@", str(key))
    return nginx_module_servers(conf, name="tls")


def test_https_request_sets_url_scheme_and_https(tls_server):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the certificate is self-signed on purpose
        resp = requests.get(f"https://127.0.0.1:{tls_server.port}/environ?x=1",
                            verify=False, timeout=DEFAULT_TIMEOUT)
    assert resp.status_code == 200, explain(resp, tls_server)
    keys = resp.json()["keys"]
    assert keys["wsgi.url_scheme"]["value"] == "https"
    assert keys["HTTPS"]["value"] == "on"
    assert keys["SERVER_PORT"]["value"] == str(tls_server.port)
    assert keys["QUERY_STRING"]["value"] == "x=1"
