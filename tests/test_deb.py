"""The Debian package libnginx-mod-http-wsgi (debian/, `make deb`).

Installs the package on this machine with dpkg, checks what it put where and that
the module is enabled the Debian way (a symlink in /etc/nginx/modules-enabled made
by the dh_nginx maintainer scripts), serves an application with an nginx whose
configuration only says ``include /etc/nginx/modules-enabled/*.conf;``, then
removes and purges the package and checks the system nginx configuration still
passes ``nginx -t`` at every step.

Runs only as root with /usr/sbin/nginx and dpkg present, and not when the package
is already installed (the test would remove it); NGX_WSGI_SKIP_DEB=1 skips it.
A .deb in build/deb/ newer than every input is used as is; otherwise the test
runs `make deb` (about half a minute after `make build`, which it reuses).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import ROOT, Flavor, NginxServer, explain

PACKAGE = "libnginx-mod-http-wsgi"
NGINX = Path("/usr/sbin/nginx")
MODULE = Path("/usr/lib/nginx/modules/ngx_http_wsgi_module.so")
AVAILABLE = Path("/usr/share/nginx/modules-available/mod-http-wsgi.conf")
ENABLED = Path("/etc/nginx/modules-enabled/50-mod-http-wsgi.conf")
CLI = Path("/usr/bin/ngx-wsgi")
DEB_DIR = ROOT / "build" / "deb"
# What the .deb is made from: a .deb older than any of these is rebuilt.
DEB_INPUTS = ["src", "debian", "Cargo.toml", "Cargo.lock", "build.rs",
              "tools/ngx_wsgi_cli.py", "nginx-conf/mod-http-wsgi.conf", "README.md"]


def package_status():
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _why_skip():
    if os.environ.get("NGX_WSGI_SKIP_DEB") == "1":
        return "NGX_WSGI_SKIP_DEB=1"
    if os.geteuid() != 0:
        return "installs a Debian package: needs root"
    if not NGINX.is_file():
        return f"{NGINX} (Debian's nginx) is not installed"
    if not shutil.which("dpkg") or not shutil.which("dpkg-query"):
        return "dpkg is not available"
    if "installed" in package_status().split():
        return f"{PACKAGE} is already installed; the test would remove it"
    return None


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")


def newest_input_mtime():
    newest = 0.0
    for name in DEB_INPUTS:
        path = ROOT / name
        paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for p in paths:
            # debian/ also holds build products (debian/build, debian/<package>, ...)
            rel = p.relative_to(ROOT).parts
            if rel[0] == "debian" and len(rel) > 2 and rel[1] != "source":
                continue
            generated = (".substvars", ".log", ".debhelper")
            if rel[0] == "debian" and (p.name in ("files", "debhelper-build-stamp")
                                       or p.name.endswith(generated)):
                continue
            newest = max(newest, p.stat().st_mtime)
    return newest


def fresh_deb():
    debs = sorted(DEB_DIR.glob(f"{PACKAGE}_*_*.deb"), key=lambda p: p.stat().st_mtime)
    if debs and debs[-1].stat().st_mtime > newest_input_mtime():
        return debs[-1]
    return None


@pytest.fixture(scope="module")
def deb():
    """A .deb of the current tree: build/deb/ if fresh, else `make deb`."""
    found = fresh_deb()
    if found:
        return found
    if not shutil.which("dpkg-buildpackage"):
        pytest.skip("no fresh .deb in build/deb and dpkg-buildpackage is not installed "
                    "(make deps)")
    proc = subprocess.run(["make", "deb"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"make deb failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    found = fresh_deb()
    assert found, f"make deb left no {PACKAGE} .deb in {DEB_DIR}"
    return found


def run(*cmd, timeout=300):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def system_nginx_t():
    proc = run(str(NGINX), "-t")
    return proc.returncode, proc.stdout + proc.stderr


class PackagedNginx(NginxServer):
    """The harness' nginx, but the module comes from the system configuration
    (``include /etc/nginx/modules-enabled/*.conf;``) instead of a load_module path."""

    def render_conf(self, http_conf, main_conf="", error_log=None):
        text = super().render_conf(http_conf, main_conf, error_log)
        first, rest = text.split("\n", 1)
        assert first.startswith("load_module "), first
        return "include /etc/nginx/modules-enabled/*.conf;\n" + rest


APP = '''
import os


def application(environ, start_response):
    body = "packaged module says hello from {} ({})".format(
        os.getpid(), environ["SERVER_SOFTWARE"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

HTTP_CONF = """
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            wsgi_app @PREFIX@/app/wsgi.py;
        }
    }
"""


def test_install_enable_serve_remove(deb, tmp_path):
    rc, before = system_nginx_t()
    if rc != 0:
        pytest.skip(f"the system nginx configuration fails nginx -t before the test:\n{before}")

    server = None
    try:
        proc = run("dpkg", "-i", str(deb))
        assert proc.returncode == 0, f"dpkg -i {deb}:\n{proc.stdout}{proc.stderr}"
        assert package_status() == "install ok installed"

        # What the package installed, and the Debian way of enabling a module.
        assert MODULE.is_file()
        assert AVAILABLE.read_text().strip() == "load_module modules/ngx_http_wsgi_module.so;"
        assert ENABLED.is_symlink(), f"{ENABLED} missing; modules-enabled has " \
                                     f"{sorted(os.listdir(ENABLED.parent))}"
        assert os.readlink(ENABLED) == str(AVAILABLE)
        assert CLI.is_file() and os.access(CLI, os.X_OK)
        assert CLI.read_text().startswith("#!/usr/bin/python3\n")
        assert Path(f"/usr/share/doc/{PACKAGE}/copyright").is_file()
        depends = run("dpkg-query", "-W", "-f=${Depends}", PACKAGE).stdout
        assert "nginx-abi-" in depends and "libpython3" in depends, depends

        # A separate nginx (own prefix, free port) that gets the module from
        # /etc/nginx/modules-enabled only.
        flavor = Flavor("deb-package", NGINX, MODULE)
        server = PackagedNginx(flavor, tmp_path / "nginx", HTTP_CONF, worker_processes=1)
        # The load_module line is relative to nginx's prefix: /usr/share/nginx/modules is
        # a symlink to /usr/lib/nginx/modules; an instance with its own -p needs the same.
        (server.prefix / "modules").symlink_to("/usr/lib/nginx/modules")
        (server.prefix / "app").mkdir()
        (server.prefix / "app" / "wsgi.py").write_text(APP)
        rc, output = server.nginx_t(HTTP_CONF)
        assert rc == 0, output
        server.start()
        resp = server.get("/")
        assert resp.status_code == 200, explain(resp, server)
        assert resp.text.startswith("packaged module says hello from "), resp.text
        assert "ngx-wsgi/" in resp.text
        server.stop()
        server = None

        # The system configuration loads the module too and stays valid.
        rc, output = system_nginx_t()
        assert rc == 0, output

        # The packaged ngx-wsgi uses the packaged module by default.
        (tmp_path / "w.py").write_text(APP)
        proc = subprocess.run([str(CLI), "serve", "w.py", "--print-config"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"load_module {MODULE};" in proc.stdout

        # Remove: the module and its symlink go away, nginx -t still passes.
        proc = run("dpkg", "-r", PACKAGE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not ENABLED.exists() and not ENABLED.is_symlink()
        assert not MODULE.exists() and not CLI.exists()
        rc, output = system_nginx_t()
        assert rc == 0, output

        # Purge: nothing of the package is left in /etc/nginx/modules-enabled.
        proc = run("dpkg", "-P", PACKAGE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not [n for n in os.listdir(ENABLED.parent) if "wsgi" in n]
        assert package_status() in ("", "unknown ok not-installed")
        rc, output = system_nginx_t()
        assert rc == 0, output
    finally:
        if server is not None:
            server.kill()
        if package_status() not in ("", "unknown ok not-installed"):
            run("dpkg", "-P", PACKAGE)
