"""A real framework: the Django admin (tests/apps/djangosite) with sqlite.

Before nginx starts, ``manage.py migrate`` and ``createsuperuser --noinput``
run with the flavour's test virtualenv's python (build/venv/bin/python) against a database in the test's temp dir; the
workers get the database path through nginx's ``env`` directive.
"""

import os
import re
import subprocess

import pytest
import requests

from harness import APPS_DIR, explain

DJANGO_CONF = """
    wsgi_python_home @VENV@;
    wsgi_python_path @APPS@/djangosite;
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            wsgi_app djangosite.wsgi:application;
        }
    }
"""

USERNAME = "admin"
PASSWORD = "ngx-wsgi-admin-pw"


def manage(python, db, *args):
    env = dict(os.environ, NGX_WSGI_DJANGO_DB=str(db),
               DJANGO_SETTINGS_MODULE="djangosite.settings",
               DJANGO_SUPERUSER_PASSWORD=PASSWORD)
    proc = subprocess.run([str(python), "manage.py", *args],
                          cwd=APPS_DIR / "djangosite", env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"manage.py {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def django_server(nginx_module_servers, tmp_path_factory, flavor):
    python = flavor.venv_python
    check = subprocess.run([str(python), "-c", "import django"], capture_output=True, timeout=60)
    if check.returncode != 0:
        pytest.skip(f"django is not installed in {flavor.venv}")
    db = tmp_path_factory.mktemp("django") / "db.sqlite3"
    manage(python, db, "migrate", "--noinput")
    manage(python, db, "createsuperuser", "--noinput", "--username", USERNAME,
           "--email", "admin@example.com")
    return nginx_module_servers(DJANGO_CONF, main_conf=f"env NGX_WSGI_DJANGO_DB={db};",
                                name="django")


def login_page(server, session):
    resp = session.get(server.url("/admin/login/?next=/admin/"), timeout=30)
    assert resp.status_code == 200, explain(resp, server)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', resp.text)
    assert match, f"no csrfmiddlewaretoken in the login form:\n{resp.text[:2000]}"
    return resp, match.group(1)


def test_login_page_has_csrf_token(django_server):
    """GET /admin/login/ answers 200 with a csrftoken cookie and the token in the form."""
    with requests.Session() as session:
        resp, token = login_page(django_server, session)
        assert "csrftoken" in session.cookies
        assert token


def test_admin_login_and_index(django_server):
    """Logging in through the admin form (token + cookie) redirects to /admin/,
    and the session cookie then gives the "Site administration" index."""
    with requests.Session() as session:
        _, token = login_page(django_server, session)
        resp = session.post(django_server.url("/admin/login/?next=/admin/"), timeout=30,
                            allow_redirects=False,
                            data={"csrfmiddlewaretoken": token, "username": USERNAME,
                                  "password": PASSWORD, "next": "/admin/"})
        assert resp.status_code == 302, explain(resp, django_server)
        assert resp.headers["Location"] == "/admin/"
        assert "sessionid" in session.cookies

        index = session.get(django_server.url("/admin/"), timeout=30)
        assert index.status_code == 200, explain(index, django_server)
        assert "Site administration" in index.text
        assert USERNAME in index.text


def test_login_without_csrf_token_is_rejected(django_server):
    """A POST without the CSRF cookie/token is refused with 403 by Django."""
    resp = django_server.post("/admin/login/", allow_redirects=False,
                              data={"username": USERNAME, "password": PASSWORD})
    assert resp.status_code == 403, explain(resp, django_server)


def test_admin_requires_login(django_server):
    """Without a session the admin index redirects to the login page."""
    resp = django_server.get("/admin/", allow_redirects=False)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/admin/login/")
