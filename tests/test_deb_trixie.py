"""The Debian 13 (trixie) package: `make deb DIST=trixie` (tools/deb-chroot.sh).

The package is built in build/trixie-root, a trixie root made with debootstrap from
Debian's archive (nginx 1.26.3, Python 3.13), and tested there the way test_deb.py tests
the Debian 12 package on this machine: installed with dpkg into the root's stock nginx,
checked (files, the modules-enabled symlink, the dependencies on trixie's nginx ABI and
libpython3.13, ``nginx -t`` of the root's configuration), then an nginx started inside the
root (chroot shares this machine's network, so the test requests it from here on a free
127.0.0.1 port; its own prefix under the root's /tmp) serves a Flask app, from a
virtualenv made with the root's python3.13 and Flask from PyPI, and tests/apps/
conformance.py; then the package is removed and purged, ``nginx -t`` passing each time.

Runs only as root with debootstrap and chroot (`make deps` installs debootstrap);
NGX_WSGI_SKIP_DEB=1 or NGX_WSGI_SKIP_DEB_TRIXIE=1 skips it. A missing debootstrap fails the
test instead of skipping it when NGX_WSGI_REQUIRE_ALL=1 (as `make test` and CI set).
A .deb in build/deb-trixie/ newer than every input is used as is; otherwise the test runs
`make deb DIST=trixie` (from scratch, with debootstrap, about 3 minutes here; see
tools/deb-chroot.sh). /proc is bind-mounted into the root for the test and unmounted after.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import APPS_DIR, ROOT, Flavor, NginxServer, explain, launcher
from test_deb import PACKAGE, newest_input_mtime

DIST = "trixie"
ROOTFS = (ROOT / "build" / f"{DIST}-root").resolve()
DEB_DIR = ROOT / "build" / f"deb-{DIST}"
SCRIPT = ROOT / "tools" / "deb-chroot.sh"
# Paths inside the root.
NGINX = "/usr/sbin/nginx"
PYTHON = "/usr/bin/python3.13"
MODULE = "/usr/lib/nginx/modules/ngx_http_wsgi_module.so"
AVAILABLE = "/usr/share/nginx/modules-available/mod-http-wsgi.conf"
ENABLED = "/etc/nginx/modules-enabled/50-mod-http-wsgi.conf"
CLI = "/usr/bin/ngx-wsgi"
# What the .deb is made from, besides test_deb.DEB_INPUTS.
EXTRA_INPUTS = [SCRIPT]


def _why_skip():
    for var in ("NGX_WSGI_SKIP_DEB", "NGX_WSGI_SKIP_DEB_TRIXIE"):
        if os.environ.get(var) == "1":
            return f"{var}=1"
    if os.geteuid() != 0:
        return "builds in a chroot and installs a Debian package there: needs root"
    if not shutil.which("chroot"):
        return "chroot is not available"
    if not shutil.which("debootstrap") and os.environ.get("NGX_WSGI_REQUIRE_ALL") != "1":
        return "debootstrap is not installed (make deps)"
    return None


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")


def host(path: str) -> Path:
    """The host path of a path inside the root."""
    return ROOTFS / path.lstrip("/")


def inside(path) -> str:
    """The path inside the root of a host path under it."""
    return "/" + str(Path(path).relative_to(ROOTFS))


# Passed on to pip in the root when set here: how this machine reaches PyPI.
PIP_ENV = ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "http_proxy",
           "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]


def in_root(*cmd, timeout=300, env=()):
    """A command run in the root (chroot), with a clean environment (plus ``env``)."""
    env = ["HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive",
           "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *env]
    return subprocess.run(["chroot", str(ROOTFS), "/usr/bin/env", "-i", *env, *cmd],
                          capture_output=True, text=True, timeout=timeout)


def root_nginx_t():
    proc = in_root(NGINX, "-t")
    return proc.returncode, proc.stdout + proc.stderr


def package_status():
    proc = in_root("dpkg-query", "-W", "-f=${Status}", PACKAGE)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def fresh_deb():
    debs = sorted(DEB_DIR.glob(f"{PACKAGE}_*_*.deb"), key=lambda p: p.stat().st_mtime)
    newest = max([newest_input_mtime()] + [p.stat().st_mtime for p in EXTRA_INPUTS])
    if debs and debs[-1].stat().st_mtime > newest and ROOTFS.is_dir():
        return debs[-1]
    return None


@pytest.fixture(scope="module")
def deb():
    """A .deb of the current tree for trixie: build/deb-trixie/ if fresh, else
    `make deb DIST=trixie` (which makes build/trixie-root first if needed)."""
    if not shutil.which("debootstrap"):
        pytest.fail("debootstrap is not installed (make deps): required by "
                    "NGX_WSGI_REQUIRE_ALL=1")
    found = fresh_deb()
    if found:
        return found
    proc = subprocess.run(["make", "deb", f"DIST={DIST}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, \
        f"make deb DIST={DIST} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    found = fresh_deb()
    assert found, f"make deb DIST={DIST} left no {PACKAGE} .deb in {DEB_DIR}"
    return found


@pytest.fixture(scope="module")
def rootfs(deb):
    """The root, up to date (tools/deb-chroot.sh --root: packages, CA certificates), with
    /proc mounted for the duration of the tests (always unmounted)."""
    proc = subprocess.run([str(SCRIPT), "--root", DIST], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"{SCRIPT} --root {DIST}:\n{proc.stdout}{proc.stderr}"
    proc_dir = host("/proc")
    subprocess.run(["mount", "--bind", "/proc", str(proc_dir)], check=True, timeout=60)
    try:
        yield ROOTFS
    finally:
        if subprocess.run(["umount", str(proc_dir)], timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(proc_dir)], timeout=60)


@dataclass(frozen=True)
class RootFlavor(Flavor):
    """The root's nginx and the packaged module, seen from the host."""

    def compiled_out(self) -> set:
        out = in_root(NGINX, "-V", timeout=60)
        return frozenset(launcher.parse_compiled_out(out.stdout + out.stderr))


class RootNginx(NginxServer):
    """The harness' nginx, run with chroot inside the root: its prefix is under the root's
    /tmp, its configuration uses the paths inside the root and gets the module from the
    root's system configuration (``include /etc/nginx/modules-enabled/*.conf;``), as
    test_deb.PackagedNginx does on the host. Logs, pid file and processes are read from
    the host as usual."""

    def __init__(self, flavor, prefix, http_conf, apps, venv, **kwargs):
        super().__init__(flavor, prefix, http_conf, **kwargs)
        self.apps = Path(apps)
        self.venv = Path(venv)
        # The settings module the fixture apps import names paths as the workers see them.
        settings = self.pylib / "ngxtest_settings.py"
        settings.write_text(settings.read_text().replace(str(ROOTFS) + "/", "/"))

    def substitute(self, text):
        text = text.replace("@APPS@", str(self.apps)).replace("@VENV@", str(self.venv))
        return super().substitute(text)

    def render_conf(self, http_conf, main_conf="", error_log=None):
        text = super().render_conf(http_conf, main_conf, error_log)
        first, rest = text.split("\n", 1)
        assert first.startswith("load_module "), first
        text = "include /etc/nginx/modules-enabled/*.conf;\n" + rest
        return text.replace(str(ROOTFS) + "/", "/")

    def nginx_cmd(self, *extra, conf=None, stderr_log=None):
        return ["chroot", str(ROOTFS), "/usr/bin/env", "-i", "LANG=C.UTF-8",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NGINX,
                "-p", inside(self.prefix) + "/", "-c", inside(conf or self.conf_path),
                "-e", inside(stderr_log or self.stderr_log_path), *extra]


HTTP_CONF = """
    wsgi_python_home @VENV@;
    wsgi_python_path @PYLIB@;
    server {
        listen 127.0.0.1:@PORT@;
        server_name localhost;
        client_max_body_size 100m;
        location / {
            wsgi_app @APPS@/flaskapp/app.py:app;
        }
        # tests/apps/conformance.py wrapped in wsgiref.validate.validator, and without it
        location /conformance/ {
            wsgi_app @APPS@/conformance.py;
            wsgi_script_name /conformance;
        }
        location /raw/ {
            wsgi_app @APPS@/conformance.py:raw_application;
            wsgi_script_name /raw;
        }
    }
"""

VALIDATOR_COMPLAINTS = [r"AssertionError", r"WSGIWarning",
                        r"garbage collected without being closed"]


def check_flask(server):
    resp = server.get("/")
    assert resp.status_code == 200, explain(resp, server)
    assert 'enctype="multipart/form-data"' in resp.text
    data = bytes(range(256)) * 1200 + b"tail"  # ~300 KB: nginx's temp file in the root
    resp = server.post("/upload", files={"upload": ("report.bin", data)},
                       data={"note": "from the host"})
    assert resp.status_code == 200, explain(resp, server)
    assert resp.text.strip() == (f"filename=report.bin size={len(data)} "
                                 f"sha256={hashlib.sha256(data).hexdigest()} "
                                 "note=from the host")
    resp = server.get("/stream?who=trixie")
    assert resp.status_code == 200, explain(resp, server)
    assert resp.text == "piece-1\npiece-2 for trixie\n"


def check_conformance(server):
    for mount in ("/conformance", "/raw"):
        resp = server.get(f"{mount}/hello")
        assert resp.status_code == 200, explain(resp, server)
        assert resp.text == "hello world" and resp.headers["X-Probe"] == "hello-probe"

        resp = server.get(f"{mount}/environ/x%20y?a=1&b=2")
        assert resp.status_code == 200, explain(resp, server)
        keys = resp.json()["keys"]
        assert keys["SCRIPT_NAME"]["value"] == mount
        assert keys["PATH_INFO"]["value"] == "/environ/x y"
        assert keys["QUERY_STRING"]["value"] == "a=1&b=2"
        assert keys["REQUEST_METHOD"]["value"] == "GET"
        assert keys["SERVER_PORT"]["value"] == str(server.port)
        software = keys["SERVER_SOFTWARE"]["value"]
        assert software.startswith("nginx/1.26.3 ngx-wsgi/"), software
        assert keys["wsgi.version"]["repr"] == "(1, 0)"

        body = os.urandom(3 * 1024 * 1024 + 17)
        resp = server.post(f"{mount}/sha256", data=body)
        assert resp.status_code == 200, explain(resp, server)
        assert resp.json() == {"sha256": hashlib.sha256(body).hexdigest(),
                               "length": len(body), "content_length": str(len(body))}

        resp = server.post(f"{mount}/input?mode=readline", data=b"one\ntwo\nthree")
        assert resp.status_code == 200, explain(resp, server)
        assert "".join(resp.json()["pieces"]) == "one\ntwo\nthree"

        raw = server.raw("GET", f"{mount}/nolength")
        assert raw.status == 200 and raw.chunked and raw.complete, raw
        assert raw.body == b"a" * 10 + b"b" * 10 + b"c" * 10

        resp = server.get(f"{mount}/write")
        assert resp.status_code == 200, explain(resp, server)
        assert resp.text == "from-write;second-write;from-iterable"


def test_install_enable_serve_remove(deb, rootfs):
    rc, before = root_nginx_t()
    assert rc == 0, f"the root's nginx configuration fails nginx -t before the test:\n{before}"
    version = in_root("dpkg-query", "-W", "-f=${Version}", "nginx").stdout
    assert version.startswith("1.26.3"), f"the root's nginx is {version!r}"

    # A package left installed by an interrupted run: this root is the project's own.
    if package_status() not in ("", "unknown ok not-installed"):
        in_root("dpkg", "-P", PACKAGE)

    work = Path(tempfile.mkdtemp(prefix="ngx-wsgi-test-", dir=host("/tmp")))
    server = None
    try:
        shutil.copy(deb, work / deb.name)
        proc = in_root("dpkg", "-i", inside(work / deb.name))
        assert proc.returncode == 0, f"dpkg -i {deb.name}:\n{proc.stdout}{proc.stderr}"
        assert package_status() == "install ok installed"

        # What the package installed, and the Debian way of enabling a module.
        assert host(MODULE).is_file()
        assert host(AVAILABLE).read_text().strip() == \
            "load_module modules/ngx_http_wsgi_module.so;"
        enabled = host(ENABLED)
        assert enabled.is_symlink(), f"{ENABLED} missing; modules-enabled has " \
                                     f"{sorted(os.listdir(enabled.parent))}"
        assert os.readlink(enabled) == AVAILABLE
        assert host(CLI).is_file() and os.access(host(CLI), os.X_OK)
        assert host(CLI).read_text().startswith("#!/usr/bin/python3\n")
        assert host(f"/usr/share/doc/{PACKAGE}/copyright").is_file()
        depends = in_root("dpkg-query", "-W", "-f=${Depends}", PACKAGE).stdout
        assert re.search(r"\bnginx-abi-1\.26\.3-\d+\b", depends), depends
        assert "libpython3.13" in depends, depends
        ldd = in_root("ldd", MODULE).stdout
        assert "libpython3.13.so.1.0 => /" in ldd and "not found" not in ldd, ldd

        # The root's system configuration loads the module and stays valid.
        rc, output = root_nginx_t()
        assert rc == 0, output

        # A virtualenv of the root's Python 3.13 with Flask from PyPI.
        venv = work / "venv"
        proc = in_root(PYTHON, "-m", "venv", inside(venv))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # The root's CA store has this machine's own CAs too (tools/deb-chroot.sh).
        pip_env = ["PIP_CERT=/etc/ssl/certs/ca-certificates.crt"] + \
            [f"{k}={os.environ[k]}" for k in PIP_ENV if os.environ.get(k)]
        proc = in_root(inside(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                       "flask", timeout=600, env=pip_env)
        assert proc.returncode == 0, f"pip install flask in the root:\n{proc.stdout}{proc.stderr}"

        # The fixture apps, copied into the root.
        apps = work / "apps"
        shutil.copytree(APPS_DIR, apps, ignore=shutil.ignore_patterns("__pycache__"))

        flavor = RootFlavor(f"deb-{DIST}", host(NGINX), host(MODULE))
        server = RootNginx(flavor, work / "nginx", HTTP_CONF, apps, venv, worker_processes=2)
        server.forbidden_log_patterns = list(VALIDATOR_COMPLAINTS)
        # load_module is relative to nginx's prefix: as /usr/share/nginx/modules in the root.
        (server.prefix / "modules").symlink_to("/usr/lib/nginx/modules")
        rc, output = server.nginx_t(HTTP_CONF)
        assert rc == 0, output
        server.start()
        check_flask(server)
        check_conformance(server)
        # The workers embed the root's Python 3.13 (its libpython, mapped in each worker).
        for pid in server.worker_pids():
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "libpython3.13.so.1.0" in maps, f"worker {pid} has no libpython3.13 mapped"
        server.stop()
        server = None

        rc, output = root_nginx_t()
        assert rc == 0, output

        # The packaged ngx-wsgi uses the packaged module by default.
        (work / "w.py").write_text("def application(e, s):\n    return []\n")
        proc = in_root("sh", "-c", f"cd {inside(work)} && {CLI} serve w.py --print-config",
                       timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"load_module {MODULE};" in proc.stdout

        # Remove: the module and its symlink go away, nginx -t still passes.
        proc = in_root("dpkg", "-r", PACKAGE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not enabled.exists() and not enabled.is_symlink()
        assert not host(MODULE).exists() and not host(CLI).exists()
        rc, output = root_nginx_t()
        assert rc == 0, output

        # Purge: nothing of the package is left in /etc/nginx/modules-enabled.
        proc = in_root("dpkg", "-P", PACKAGE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not [n for n in os.listdir(enabled.parent) if "wsgi" in n]
        assert package_status() in ("", "unknown ok not-installed")
        rc, output = root_nginx_t()
        assert rc == 0, output
    finally:
        if server is not None:
            server.kill()
        if package_status() not in ("", "unknown ok not-installed"):
            in_root("dpkg", "-P", PACKAGE)
        shutil.rmtree(work, ignore_errors=True)
