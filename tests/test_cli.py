"""`ngx-wsgi serve` (tools/ngx_wsgi_cli.py): the command that writes an nginx
configuration for one application and runs nginx in the foreground.

Each test runs the command in a subprocess (as a user would in a terminal),
with the flavour's nginx binary and module, on a free port, and talks HTTP to it.
The command's stdout/stderr go to files in the test's temp directory.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from harness import (BAD_LOG_PATTERNS, FLAVORS, ROOT, children_of, free_port, pid_alive,
                     wait_until)

CLI = ROOT / "tools" / "ngx_wsgi_cli.py"

SCRIPT_APP = '''
import os

BODY = {body!r}


def application(environ, start_response):
    data = "{{}} pid={{}}".format(BODY, os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(data)))])
    return [data]
'''

MODULE_APP = '''
import os

from mypkg.helper import BODY


def app(environ, start_response):
    data = "{} pid={} path={}".format(BODY, os.getpid(), environ["PATH_INFO"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [data]
'''


def cli_env():
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)  # --venv defaults to it: keep the runs independent of it
    return env


def processes_mentioning(text):
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline and pid_alive(int(entry)):
            found.append(int(entry))
    return found


class Cli:
    """One `ngx-wsgi serve` process."""

    def __init__(self, flavor, workdir: Path, app: str, *extra, server_root=True,
                 pass_module=True):
        self.workdir = workdir
        self.port = free_port()
        self.server_root = workdir / "server-root" if server_root else None
        self.out_path = workdir / "cli.stdout"
        self.err_path = workdir / "cli.stderr"
        module = ["--module", str(flavor.module)] if pass_module else []
        self.cmd = [sys.executable, str(CLI), "serve", app,
                    "--nginx", str(flavor.nginx), *module,
                    "--port", str(self.port), *extra]
        if self.server_root:
            self.cmd += ["--server-root", str(self.server_root)]
        self.proc = None

    def start(self, timeout=30.0):
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, env=cli_env(),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"ngx-wsgi serve exited with {self.proc.returncode}:\n"
                                     f"{self.stderr()}")
            return "serving http://" in self.stderr()

        wait_until(ready, timeout, interval=0.1, what="the ngx-wsgi banner")
        return self

    def stderr(self):
        return self.err_path.read_text(errors="replace")

    def stdout(self):
        return self.out_path.read_text(errors="replace")

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path="/"):
        return requests.get(self.url(path), timeout=30)

    @property
    def prefix_marker(self):
        """A string in the nginx master's command line (its -p prefix)."""
        return f"{self.config_dir()}/"

    def config_dir(self):
        match = re.search(r"config:\s+(\S+)/nginx\.conf", self.stderr())
        assert match, f"no config line in the banner:\n{self.stderr()}"
        return match.group(1)

    def master_pid(self):
        return int(Path(self.config_dir(), "nginx.pid").read_text())

    def workers(self):
        return children_of(self.master_pid())

    def stop(self, sig=signal.SIGINT, timeout=15.0):
        """Signal the command; returns (exit code, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ngx-wsgi serve did not exit within {timeout}s of {sig!r}")
        return rc, time.monotonic() - t0

    def kill(self):
        marker = None
        try:
            marker = self.prefix_marker
        except (AssertionError, OSError):
            pass
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in processes_mentioning(marker) if marker else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def bad_log_lines(self):
        return [line for line in self.stderr().splitlines()
                if any(p.search(line) for p in BAD_LOG_PATTERNS)]


@pytest.fixture
def cli(flavor, tmp_path):
    """Factory for `ngx-wsgi serve` processes, stopped (SIGINT) at teardown."""
    started = []

    def make(app, *extra, server_root=True, start=True):
        c = Cli(flavor, tmp_path, app, *extra, server_root=server_root)
        started.append(c)
        return c.start() if start else c

    yield make
    problems = []
    for c in started:
        if c.proc is None or c.proc.poll() is not None:
            continue
        try:
            c.stop()
        except AssertionError as exc:
            problems.append(str(exc))
    if problems:
        pytest.fail("\n".join(problems))


def write_script_app(path: Path, body: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SCRIPT_APP.format(body=body))


def write_module_app(root: Path, body: str):
    pkg = root / "mypkg"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text(f"BODY = {body!r}\n")
    (pkg / "web.py").write_text(MODULE_APP)


def wait_for_body(c, needle, timeout=15.0):
    def served():
        try:
            resp = c.get("/")
        except requests.RequestException:
            return None
        return resp if resp.status_code == 200 and needle in resp.text else None

    try:
        return wait_until(served, timeout, interval=0.2, what=f"{needle!r} to be served")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- ngx-wsgi stderr ---\n{c.stderr()[-4000:]}")


def test_script_app_and_static(cli, tmp_path):
    """A script given by a relative path is served at /; --static serves files with
    nginx (a directory and a single file); --access-log writes to stdout."""
    write_script_app(tmp_path / "site" / "wsgi.py", "hello from a script")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "style.css").write_text("body { color: teal }\n")
    (tmp_path / "robots.txt").write_text("User-agent: *\n")
    c = cli("site/wsgi.py", "--static", "/static=assets", "--static", "/robots.txt=robots.txt",
            "--access-log", "--workers", "1", "--threads", "2")

    resp = c.get("/")
    assert resp.status_code == 200, c.stderr()
    assert resp.text.startswith("hello from a script pid=")

    css = c.get("/static/style.css")
    assert css.status_code == 200
    assert css.text == "body { color: teal }\n"
    assert css.headers["Content-Type"].startswith("text/css")
    assert c.get("/robots.txt").text == "User-agent: *\n"
    assert c.get("/static/missing.css").status_code == 404

    conf = (c.server_root / "nginx.conf").read_text()
    assert f"wsgi_app {tmp_path / 'site' / 'wsgi.py'};" in conf  # made absolute
    assert "wsgi_threads 2;" in conf and "worker_processes 1;" in conf

    banner = c.stderr()
    assert c.url("/") in banner and str(tmp_path / "site" / "wsgi.py") in banner
    assert re.search(r"nginx \d+\.\d+\.\d+", banner), banner
    assert re.search(r"ngx-wsgi \d+\.\d+\.\d+", banner), banner

    wait_until(lambda: "GET /static/style.css HTTP/1.1" in c.stdout(), 5,
               what="the access log line on stdout")
    rc, _ = c.stop()
    assert rc == 0, c.stderr()
    assert not c.bad_log_lines(), c.stderr()


def test_module_app(cli, tmp_path):
    """``pkg.module:callable`` imported from the current directory (the default python
    path); with --reload an edit inside the package reloads nginx."""
    write_module_app(tmp_path, "hello from a module")
    c = cli("mypkg.web:app", "--reload", "--timeout", "20s")
    resp = c.get("/some/path")
    assert resp.status_code == 200, c.stderr()
    assert resp.text.startswith("hello from a module pid=")
    assert resp.text.endswith("path=/some/path")
    conf = (c.server_root / "nginx.conf").read_text()
    assert f"wsgi_python_path {tmp_path};" in conf
    assert "wsgi_app mypkg.web:app;" in conf and "wsgi_timeout 20s;" in conf

    (tmp_path / "mypkg" / "helper.py").write_text("BODY = 'the module, edited'\n")
    wait_for_body(c, "the module, edited")
    assert "helper.py changed" in c.stderr()


def test_reload_on_edit(cli, tmp_path):
    """--reload: editing the script makes nginx reload (new worker processes, same
    master) and the new code is served within a few seconds."""
    script = tmp_path / "app" / "wsgi.py"
    write_script_app(script, "version one")
    c = cli(str(script), "--reload")
    first = c.get("/")
    assert first.text.startswith("version one pid="), c.stderr()
    master = c.master_pid()
    old_workers = c.workers()
    assert int(first.text.split("pid=")[1]) in old_workers

    write_script_app(script, "version two, longer")
    resp = wait_for_body(c, "version two, longer")
    new_pid = int(resp.text.split("pid=")[1])
    assert new_pid not in old_workers, f"old workers {old_workers} served the new code"
    assert c.master_pid() == master
    assert re.search(r"wsgi\.py changed: reloading nginx", c.stderr()), c.stderr()
    rc, _ = c.stop()
    assert rc == 0
    assert not c.bad_log_lines(), c.stderr()


def test_sigint_stops_everything(cli, tmp_path):
    """Ctrl-C (SIGINT to the command) stops nginx gracefully: the command exits 0
    within 15 s, no process of that nginx remains, the temporary server root is gone."""
    write_script_app(tmp_path / "wsgi.py", "still here")
    c = cli("wsgi.py", server_root=False)   # a fresh temporary server root
    assert c.get("/").text.startswith("still here")
    marker = c.prefix_marker
    root = Path(c.config_dir())
    assert root.is_dir() and root != tmp_path
    nginx_pids = processes_mentioning(marker) + sorted(c.workers())
    assert c.master_pid() in nginx_pids

    rc, took = c.stop(signal.SIGINT, timeout=15)
    assert rc == 0, c.stderr()
    assert took < 15
    assert not processes_mentioning(marker)
    assert not [p for p in nginx_pids if pid_alive(p)], "nginx processes left behind"
    assert not root.exists(), "the temporary server root was not removed"
    assert "stopping nginx gracefully" in c.stderr()
    with pytest.raises(requests.ConnectionError):
        requests.get(c.url("/"), timeout=5)
    assert not c.bad_log_lines(), c.stderr()


def test_sigterm_stops_too(cli, tmp_path):
    write_script_app(tmp_path / "wsgi.py", "terminate me")
    c = cli("wsgi.py")
    workers = c.workers()
    rc, _ = c.stop(signal.SIGTERM)
    assert rc == 0
    assert not [p for p in workers if pid_alive(p)]


def test_print_config(flavor, tmp_path):
    """--print-config prints the generated nginx.conf and starts nothing (run through
    the script's own #! line)."""
    write_script_app(tmp_path / "wsgi.py", "unused")
    port = free_port()
    out = subprocess.run([str(CLI), "serve", "wsgi.py:application", "--print-config",
                          "--port", str(port), "--module", str(flavor.module),
                          "--nginx", str(flavor.nginx), "--venv", str(tmp_path),
                          "--python-path", "lib", "--static", f"/s={tmp_path}"],
                         cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    conf = out.stdout
    assert f"wsgi_app {tmp_path / 'wsgi.py'}:application;" in conf
    assert f"load_module {flavor.module};" in conf
    assert f"listen 127.0.0.1:{port};" in conf
    assert "daemon off;" in conf and "master_process on;" in conf
    assert "error_log stderr" in conf
    assert f"wsgi_python_home {tmp_path};" in conf
    assert f"wsgi_python_path {tmp_path / 'lib'};" in conf
    assert f"alias {tmp_path}/;" in conf
    assert "access_log off;" in conf
    assert not processes_mentioning(f"ngx-wsgi-{port}")


def test_bad_app_exits_with_nginx_message(flavor, tmp_path):
    """A script that does not exist: nginx -t fails, its [emerg] message is shown and
    the command exits non-zero without starting nginx."""
    port = free_port()
    out = subprocess.run([sys.executable, str(CLI), "serve", "missing/app.py",
                          "--port", str(port), "--module", str(flavor.module),
                          "--nginx", str(flavor.nginx), "--server-root", str(tmp_path / "r")],
                         cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert "[emerg]" in out.stderr, out.stderr
    assert str(tmp_path / "missing" / "app.py") in out.stderr
    assert "serving http://" not in out.stderr
    assert not processes_mentioning(str(tmp_path / "r"))


def test_usage_errors(flavor, tmp_path):
    """Problems the command finds itself exit with status 2 and a one-line reason."""
    base = [sys.executable, str(CLI), "serve", "--nginx", str(flavor.nginx)]
    cases = [
        (["app.py", "--module", str(tmp_path / "nope.so")], "ngx_http_wsgi_module.so not found"),
        (["app.py", "--module", str(flavor.module), "--static", "/x=" + str(tmp_path / "no")],
         "does not exist"),
        (["not a module", "--module", str(flavor.module)], "neither a script"),
    ]
    for args, message in cases:
        out = subprocess.run(base + args, cwd=tmp_path, env=cli_env(), capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr, (args, out.stderr)


def test_status_option(cli, tmp_path):
    """--status /URL adds a wsgi_status location: JSON for every worker of this server."""
    write_script_app(tmp_path / "site" / "wsgi.py", "hello")
    c = cli("site/wsgi.py", "--status", "/wsgi-status", "--workers", "2", "--threads", "3")
    for _ in range(5):
        assert c.get("/").status_code == 200
    resp = c.get("/wsgi-status")
    assert resp.status_code == 200, c.stderr()
    assert resp.headers["Content-Type"] == "application/json"
    doc = resp.json()
    assert len(doc["workers"]) == 2
    assert all(w["threads"] == 3 for w in doc["workers"])
    assert sum(w["requests"] for w in doc["workers"]) >= 5
    assert "wsgi_status;" in (c.server_root / "nginx.conf").read_text()


VERSION_APP = '''
import sys


def application(environ, start_response):
    data = "python=%d.%d prefix=%s" % (sys.version_info[0], sys.version_info[1], sys.prefix)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [data.encode()]
'''


@pytest.mark.parametrize("name", ["debian", "py3.12", "py3.13"])
def test_venv_picks_the_module_for_its_python(name, tmp_path):
    """Without --module, --venv V serves with the module built for V's Python: build/debian
    (or the installed package's) for 3.11, build/py3.X for the others; the app runs on it."""
    flavor = FLAVORS[name]
    if flavor.missing():
        pytest.skip(f"flavour {name} not built: {flavor.missing()}")
    installed = Path("/usr/lib/nginx/modules/ngx_http_wsgi_module.so")
    expected = (installed if name == "debian" and installed.is_file() else flavor.module)
    (tmp_path / "wsgi.py").write_text(VERSION_APP)
    conf = subprocess.run([sys.executable, str(CLI), "serve", "wsgi.py", "--venv",
                           str(flavor.venv), "--nginx", str(flavor.nginx), "--print-config"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert conf.returncode == 0, conf.stderr
    assert f"load_module {expected};" in conf.stdout, conf.stdout
    c = Cli(flavor, tmp_path, "wsgi.py", "--venv", str(flavor.venv), pass_module=False)
    try:
        c.start()
        assert "warning" not in c.stderr(), c.stderr()
        resp = c.get("/")
        assert resp.status_code == 200, c.stderr()
        assert resp.text == f"python={flavor.python_version} prefix={flavor.venv}", resp.text
        rc, _ = c.stop()
        assert rc == 0, c.stderr()
        assert not c.bad_log_lines(), c.stderr()
    finally:
        c.kill()


def test_venv_without_a_module_for_its_python(tmp_path):
    """A virtualenv of a Python no module was built for: exit 2 naming the venv's Python
    and the `make build PYTHON=...` command that builds a module for it. The version comes
    from pyvenv.cfg, or from asking the venv's bin/python when pyvenv.cfg has none."""
    (tmp_path / "wsgi.py").write_text(VERSION_APP)
    with_cfg = tmp_path / "venv39"
    with_cfg.mkdir()
    (with_cfg / "pyvenv.cfg").write_text("home = /opt/python3.9/bin\n"
                                         "include-system-site-packages = false\n"
                                         "version = 3.9.18\n")
    asked = tmp_path / "venv38"
    (asked / "bin").mkdir(parents=True)
    (asked / "pyvenv.cfg").write_text("home = /opt/python3.8/bin\n")
    (asked / "bin" / "python").write_text("#!/bin/sh\necho 3.8\n")
    (asked / "bin" / "python").chmod(0o755)
    for venv, version, base in ((with_cfg, "3.9", "/opt/python3.9/bin/python3.9"),
                                (asked, "3.8", "/opt/python3.8/bin/python3.8")):
        out = subprocess.run([sys.executable, str(CLI), "serve", "wsgi.py", "--venv", str(venv),
                              "--port", str(free_port())],
                             cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 2, out.stderr
        assert f"is a Python {version} virtualenv" in out.stderr, out.stderr
        assert f"make build PYTHON={base}" in out.stderr, out.stderr
        assert f"build/py{version}/ngx_http_wsgi_module.so" in out.stderr, out.stderr
        assert "serving http://" not in out.stderr
