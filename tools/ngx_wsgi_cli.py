#!/usr/bin/env python3
"""ngx-wsgi: serve a WSGI application with nginx and ngx_http_wsgi_module.

    ngx-wsgi serve path/to/wsgi.py[:callable]
    ngx-wsgi serve package.module:callable --port 8080 --static /static=static

``serve`` writes a complete nginx configuration into a directory of its own (a fresh
temporary directory, or ``--server-root``), checks it with ``nginx -t``, then runs nginx
in the foreground (``daemon off; master_process on;``) with the module loaded and the
application mounted at ``/``. The error log goes to the terminal (stderr). Ctrl-C or
SIGTERM stops nginx gracefully (SIGQUIT; SIGTERM, then SIGKILL after a timeout), SIGHUP
reloads it. With ``--reload`` the application's Python files are polled once a second
and nginx is reloaded (new workers import the new code) when one changes.

Standard library only; Python >= 3.11.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

VERSION = "0.1.0"
PROG = "ngx-wsgi"

DEFAULT_NGINX = "/usr/sbin/nginx"
SYSTEM_MODULE = Path("/usr/lib/nginx/modules/ngx_http_wsgi_module.so")
# When run from a source tree: tools/ngx_wsgi_cli.py -> <repo>/build/debian/... (Debian's
# Python 3.11), and build/py3.X/... for other Pythons (`make build PYTHON=.../python3.X`).
REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_BUILD = REPO_ROOT / "build"
REPO_MODULE = REPO_BUILD / "debian" / "ngx_http_wsgi_module.so"
SYSTEM_MIME_TYPES = Path("/etc/nginx/mime.types")

# Used when /etc/nginx/mime.types is not there (e.g. an nginx built from source).
FALLBACK_TYPES = {
    "text/html": "html htm",
    "text/css": "css",
    "text/plain": "txt",
    "text/xml": "xml",
    "application/javascript": "js mjs",
    "application/json": "json map",
    "application/pdf": "pdf",
    "application/wasm": "wasm",
    "image/png": "png",
    "image/jpeg": "jpg jpeg",
    "image/gif": "gif",
    "image/svg+xml": "svg svgz",
    "image/webp": "webp",
    "image/x-icon": "ico",
    "font/woff": "woff",
    "font/woff2": "woff2",
}

# Directories never scanned by --reload.
SKIP_DIR_NAMES = {"__pycache__", "node_modules", "site-packages", "dist-packages"}
MAX_WATCHED_FILES = 20000


class UsageError(Exception):
    """A problem with the command line: message printed, exit status 2."""


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The application and what to watch
# --------------------------------------------------------------------------

@dataclass
class App:
    """What APP on the command line names."""
    spec: str                       # the value given to wsgi_app
    script: Optional[Path] = None   # a script file, or None for a module
    module: Optional[str] = None    # dotted module name, or None for a script
    callable: Optional[str] = None

    @property
    def default_python_path(self) -> Path:
        return self.script.parent if self.script else Path.cwd()


def parse_app(value: str) -> App:
    """``path/to/wsgi.py[:callable]`` or ``pkg.module[:callable]``; script paths made absolute."""
    target, callable_name = value, None
    head, sep, tail = value.rpartition(":")
    if sep and head and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tail):
        target, callable_name = head, tail
    if not target:
        raise UsageError(f"APP {value!r} names no script or module")
    # The module's own rule: a value containing "/" or ending in ".py" is a script.
    if "/" in target or target.endswith(".py"):
        script = Path(os.path.abspath(os.path.expanduser(target)))
        spec = str(script) + (f":{callable_name}" if callable_name else "")
        return App(spec, script=script, callable=callable_name)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", target):
        raise UsageError(f"APP {value!r} is neither a script path (.py) nor a dotted module name")
    return App(value, module=target, callable=callable_name)


def module_location(module: str, search_path: list) -> Optional[Path]:
    """The top-level package directory (or single-file module) of ``module`` on the path."""
    top = module.split(".")[0]
    for directory in search_path:
        package = Path(directory) / top
        if package.is_dir():
            return package
        single = Path(directory) / f"{top}.py"
        if single.is_file():
            return single
    return None


class Watcher:
    """Polls the mtimes of the .py files under some roots (no threads, no dependencies)."""

    def __init__(self, roots: list, exclude: list):
        self.roots = []
        for root in roots:
            root = Path(root).resolve()
            if root not in self.roots:
                self.roots.append(root)
        self.exclude = {Path(p).resolve() for p in exclude if p}
        self.truncated = False
        self.snapshot = self.scan()

    def _skip_dir(self, path: Path) -> bool:
        return (path.name.startswith(".") or path.name in SKIP_DIR_NAMES
                or path in self.exclude or (path / "pyvenv.cfg").exists())

    def scan(self) -> dict:
        found = {}
        for root in self.roots:
            if root.is_file():
                self._add(found, root)
                continue
            stack = [root]
            while stack and len(found) < MAX_WATCHED_FILES:
                directory = stack.pop()
                try:
                    entries = list(os.scandir(directory))
                except OSError:
                    continue
                for entry in entries:
                    path = Path(entry.path)
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not self._skip_dir(path):
                                stack.append(path)
                        elif entry.name.endswith(".py") and entry.is_file():
                            self._add(found, path)
                    except OSError:
                        continue
            if len(found) >= MAX_WATCHED_FILES:
                self.truncated = True
        return found

    @staticmethod
    def _add(found: dict, path: Path) -> None:
        try:
            st = path.stat()
        except OSError:
            return
        found[path] = (st.st_mtime_ns, st.st_size)

    def changes(self) -> list:
        """Files added, removed or modified since the previous call."""
        now = self.scan()
        changed = sorted(p for p in now.keys() | self.snapshot.keys()
                         if now.get(p) != self.snapshot.get(p))
        self.snapshot = now
        return changed


# --------------------------------------------------------------------------
# nginx and the module
# --------------------------------------------------------------------------

def nginx_version(nginx: str) -> str:
    try:
        out = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise UsageError(f"cannot run {nginx}: {exc}")
    text = (out.stdout + out.stderr).strip()
    match = re.search(r"nginx/(\S+)", text)
    return match.group(1) if match else text or "unknown"


def nginx_compiled_out(nginx: str) -> set:
    """Names like ``http_proxy`` of the modules this nginx was configured --without."""
    try:
        out = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30)
    except OSError:
        return set()
    return parse_compiled_out(out.stdout + out.stderr)


def parse_compiled_out(version_output: str) -> set:
    """The ``--without-http_..._module`` names in the output of ``nginx -V``."""
    return set(re.findall(r"--without-(http_\w+?)_module", version_output))


def nginx_has_e_option(nginx: str) -> bool:
    """``nginx -e file`` exists from nginx 1.19.5."""
    try:
        out = subprocess.run([nginx, "-h"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return "-e filename" in out.stdout + out.stderr


def module_info(module: Path) -> dict:
    """ngx-wsgi version, the nginx version and the libpython the module was built with,
    read from the strings in the .so (empty values when not found)."""
    info = {"version": "", "nginx": "", "libpython": ""}
    try:
        data = module.read_bytes()
    except OSError:
        return info
    # SERVER_SOFTWARE: "nginx/1.22.1 ngx-wsgi/0.1.0" (followed by other strings)
    match = re.search(rb"nginx/([0-9][0-9.]*[0-9]) "
                      rb"ngx-wsgi/([0-9]+(?:\.[0-9]+)*(?:[-+~][0-9A-Za-z.]*[0-9])?)", data)
    if match:
        info["nginx"], info["version"] = (g.decode() for g in match.groups())
    match = re.search(rb"libpython(3\.[0-9]+)", data)
    if match:
        info["libpython"] = match.group(1).decode()
    return info


def pyvenv_cfg(venv: Path) -> dict:
    """The keys and values of a virtualenv's pyvenv.cfg (empty when there is none)."""
    try:
        text = (venv / "pyvenv.cfg").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip()
    return values


def venv_python_version(venv: Path) -> str:
    """``3.11`` from a virtualenv's pyvenv.cfg (``version`` or ``version_info``), else from
    asking its ``bin/python``; '' when unknown."""
    cfg = pyvenv_cfg(venv)
    for key in ("version_info", "version"):
        match = re.match(r"(3\.[0-9]+)", cfg.get(key, ""))
        if match:
            return match.group(1)
    python = venv / "bin" / "python"
    if python.is_file():
        try:
            out = subprocess.run([str(python), "-c",
                                  "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return ""
        if out.returncode == 0 and re.fullmatch(r"3\.[0-9]+", out.stdout.strip()):
            return out.stdout.strip()
    return ""


def venv_base_python(venv: Path, version: str) -> str:
    """The interpreter the virtualenv was made from (for the `make build PYTHON=` hint)."""
    cfg = pyvenv_cfg(venv)
    if cfg.get("executable"):
        return cfg["executable"]
    if cfg.get("home"):
        return str(Path(cfg["home"]) / f"python{version}")
    return f"/path/to/python{version}"


def module_candidates(version: str) -> list:
    """Where a module for Python ``version`` may be: the installed package's, then this
    source tree's build/debian (Debian's Python 3.11) and build/py<version>."""
    candidates = [SYSTEM_MODULE, REPO_MODULE,
                  REPO_BUILD / f"py{version}" / "ngx_http_wsgi_module.so"]
    unique = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def module_for_venv(venv: Path) -> Optional[Path]:
    """The module that embeds the Python of ``venv`` (None when the venv's Python is unknown:
    the default module is used then). UsageError when no built module matches."""
    version = venv_python_version(venv)
    if not version:
        return None
    tried = []
    for path in module_candidates(version):
        if not path.is_file():
            continue
        embeds = module_info(path)["libpython"]
        if embeds == version:
            return path
        tried.append(f"{path} embeds Python {embeds or '?'}")
    looked = "; ".join(tried) if tried else "none found"
    raise UsageError(
        f"--venv {venv} is a Python {version} virtualenv, and no ngx_http_wsgi_module.so "
        f"built for Python {version} was found ({looked}). Build one in the source tree "
        f"with 'make build PYTHON={venv_base_python(venv, version)}' "
        f"(it writes build/py{version}/ngx_http_wsgi_module.so), or pass --module PATH")


# --------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------

def quote(value) -> str:
    """An nginx configuration token: bare when safe, else double-quoted with escapes."""
    text = str(value)
    if text and re.fullmatch(r"[A-Za-z0-9_./:@%+=,~\[\]*-]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class StaticMount:
    url: str
    path: Path
    is_dir: bool


def parse_status_url(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    if not value.startswith("/") or value == "/" or any(c.isspace() for c in value):
        raise UsageError(f"--status {value!r}: expected a path such as /wsgi-status")
    return value


def parse_static(value: str) -> StaticMount:
    url, sep, directory = value.partition("=")
    if not sep or not url.startswith("/") or not directory:
        raise UsageError(f"--static {value!r}: expected /url=directory")
    path = Path(os.path.abspath(os.path.expanduser(directory)))
    if not path.exists():
        raise UsageError(f"--static {value!r}: {path} does not exist")
    if path.is_dir():
        url = url.rstrip("/") + "/"
        if url == "/":
            raise UsageError(f"--static {value!r}: / is the application's; use a sub-path")
        return StaticMount(url, path, True)
    return StaticMount(url, path, False)


@dataclass
class Settings:
    app: App
    server_root: Path
    module: Path
    nginx: str
    host: str
    port: int
    workers: str
    threads: Optional[int]
    timeout: Optional[str]
    venv: Optional[Path]
    python_path: list
    static: list
    status: Optional[str]
    access_log: bool
    log_level: str
    max_body_size: str
    graceful_timeout: float
    user: Optional[str]
    compiled_out: set = field(default_factory=set)

    @property
    def conf_path(self) -> Path:
        return self.server_root / "nginx.conf"

    @property
    def pid_path(self) -> Path:
        return self.server_root / "nginx.pid"

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"


def render_config(s: Settings) -> str:
    root = s.server_root
    lines = [
        f"# Generated by `{PROG} serve` {VERSION}: nginx in the foreground serving {s.app.spec}",
        f"load_module {quote(s.module)};",
    ]
    if s.user:
        user, _, group = s.user.partition(":")
        lines.append(f"user {quote(user)} {quote(group or user)};")
    lines += [
        f"worker_processes {s.workers};",
        "daemon off;",
        "master_process on;",
        f"pid {quote(root / 'nginx.pid')};",
        f"lock_file {quote(root / 'nginx.lock')};",
        f"error_log stderr {s.log_level};",
        f"worker_shutdown_timeout {max(1, int(s.graceful_timeout))}s;",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
    ]
    if SYSTEM_MIME_TYPES.is_file():
        lines.append(f"    include {quote(SYSTEM_MIME_TYPES)};")
    else:
        lines.append("    types {")
        lines += [f"        {mime} {exts};" for mime, exts in FALLBACK_TYPES.items()]
        lines.append("    }")
    lines += [
        "    default_type application/octet-stream;",
        "    sendfile on;",
        f"    client_max_body_size {s.max_body_size};",
        "    access_log " + ("/dev/stdout;" if s.access_log else "off;"),
        f"    client_body_temp_path {quote(root / 'client_body_temp')};",
    ]
    for mod in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"http_{mod}" not in s.compiled_out:
            lines.append(f"    {mod}_temp_path {quote(root / (mod + '_temp'))};")
    lines.append("")
    if s.venv:
        lines.append(f"    wsgi_python_home {quote(s.venv)};")
    if s.python_path:
        lines.append("    wsgi_python_path " + " ".join(quote(p) for p in s.python_path) + ";")
    if s.threads is not None:
        lines.append(f"    wsgi_threads {s.threads};")
    if s.timeout is not None:
        lines.append(f"    wsgi_timeout {s.timeout};")
    lines += [
        "",
        "    server {",
        f"        listen {s.listen};",
        "        server_name _;",
    ]
    for mount in s.static:
        if mount.is_dir:
            lines += [f"        location {quote(mount.url)} {{",
                      f"            alias {quote(str(mount.path) + '/')};",
                      "        }"]
        else:
            lines += [f"        location = {quote(mount.url)} {{",
                      f"            alias {quote(mount.path)};",
                      "        }"]
    if s.status:
        lines += [f"        location = {quote(s.status)} {{",
                  "            wsgi_status;",
                  "            allow 127.0.0.1;",
                  "            allow ::1;",
                  "            deny all;",
                  "        }"]
    lines += [
        "        location / {",
        f"            wsgi_app {quote(s.app.spec)};",
        "        }",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Running nginx
# --------------------------------------------------------------------------

def _child_setup() -> None:
    """In the nginx master before exec: get SIGTERM if this command dies (PR_SET_PDEATHSIG),
    so a killed ngx-wsgi never leaves an nginx behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class Runner:
    def __init__(self, s: Settings, watcher: Optional[Watcher]):
        self.s = s
        self.watcher = watcher
        self.proc: Optional[subprocess.Popen] = None
        self.pending: list = []

    def nginx_cmd(self, *extra: str) -> list:
        cmd = [self.s.nginx, "-p", f"{self.s.server_root}/", "-c", str(self.s.conf_path)]
        if nginx_has_e_option(self.s.nginx):
            cmd += ["-e", "stderr"]
        return cmd + list(extra)

    def check_config(self) -> int:
        out = subprocess.run(self.nginx_cmd("-t", "-q"), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=120)
        text = (out.stdout + out.stderr).strip()
        if out.returncode != 0:
            say(f"nginx -t failed for {self.s.conf_path}:")
            print(text or f"(no output, exit status {out.returncode})", file=sys.stderr,
                  flush=True)
        elif text:
            print(text, file=sys.stderr, flush=True)
        return out.returncode

    def _on_signal(self, number, _frame):
        self.pending.append(number)

    def _send(self, sig: int) -> None:
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_group(self, sig: int) -> bool:
        """Signal what is left of nginx's process group; False when nothing is left."""
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _wait_listening(self, timeout: float) -> bool:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.s.host, self.s.host).strip("[]")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None and not self.pending:
            # nginx writes its pid file once its sockets are bound (so a port held by
            # another program does not count), then the port must accept.
            try:
                if int(self.s.pid_path.read_text().strip()) == self.proc.pid:
                    with socket.create_connection((host, self.s.port), timeout=0.5):
                        return True
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        return False

    def banner(self, nginx_ver: str, info: dict) -> None:
        s = self.s
        module_desc = f"ngx-wsgi {info['version'] or '(version unknown)'}"
        if info["nginx"]:
            module_desc += f", built for nginx {info['nginx']}"
        lines = [
            f"serving {s.url}",
            f"  app:         {s.app.spec}",
            f"  nginx:       {s.nginx} (nginx {nginx_ver}), {s.workers} worker(s)"
            + (f", {s.threads} Python thread(s) each" if s.threads is not None else ""),
            f"  module:      {s.module} ({module_desc})",
        ]
        if s.venv:
            lines.append(f"  venv:        {s.venv}")
        if s.python_path:
            lines.append(f"  python path: {' '.join(str(p) for p in s.python_path)}")
        for mount in s.static:
            lines.append(f"  static:      {mount.url} -> {mount.path}")
        if s.status:
            lines.append(f"  status:      {s.status} (wsgi_status, from this machine only)")
        lines.append(f"  config:      {s.conf_path} (pid file {s.pid_path})")
        if self.watcher:
            lines.append(f"  reload:      watching {len(self.watcher.snapshot)} Python file(s) "
                         f"under {', '.join(str(r) for r in self.watcher.roots)}")
            if self.watcher.truncated:
                lines.append(f"               (stopped at {MAX_WATCHED_FILES} files)")
        lines.append("Ctrl-C stops (graceful), SIGHUP reloads")
        say(lines[0])
        for line in lines[1:]:
            print(line, file=sys.stderr, flush=True)

    def run(self, nginx_ver: str, info: dict) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # Its own process group: a Ctrl-C in the terminal reaches this command only, which
        # turns it into a graceful stop (nginx takes SIGINT as "stop now").
        self.proc = subprocess.Popen(self.nginx_cmd(), stdin=subprocess.DEVNULL,
                                     process_group=0, preexec_fn=_child_setup)
        if self._wait_listening(15.0):
            self.banner(nginx_ver, info)
        elif self.proc.poll() is None and not self.pending:
            say(f"nginx is running but {self.s.listen} does not accept connections yet")

        next_poll = time.monotonic() + 1.0
        while True:
            rc = self.proc.poll()
            if rc is not None:
                return self._finish(rc, requested=False)
            while self.pending:
                sig = self.pending.pop(0)
                if sig == signal.SIGHUP:
                    say("SIGHUP: reloading nginx")
                    self._send(signal.SIGHUP)
                else:
                    return self.stop(_signal_name(sig))
            if self.watcher and time.monotonic() >= next_poll:
                changed = self.watcher.changes()
                if changed:
                    names = ", ".join(str(p) for p in changed[:3])
                    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
                    say(f"{names}{more} changed: reloading nginx (SIGHUP), "
                        "new workers import the new code")
                    self._send(signal.SIGHUP)
                next_poll = time.monotonic() + 1.0
            time.sleep(0.1)

    def stop(self, why: str) -> int:
        """Graceful stop (SIGQUIT), then SIGTERM, then SIGKILL; a second Ctrl-C hurries it."""
        grace = self.s.graceful_timeout
        say(f"{why}: stopping nginx gracefully (SIGQUIT; Ctrl-C again to hurry)")
        steps = [(signal.SIGQUIT, grace + 2.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)]
        for number, (sig, wait) in enumerate(steps):
            if number:
                say(f"nginx still running: sending {_signal_name(sig)}")
            if sig == signal.SIGKILL:
                self._kill_group(sig)
            else:
                self._send(sig)
            deadline = time.monotonic() + wait
            hurry = False
            while time.monotonic() < deadline:
                rc = self.proc.poll()
                if rc is not None:
                    return self._finish(rc, requested=True)
                if self.pending:
                    sig_in = self.pending.pop(0)
                    if sig_in != signal.SIGHUP:
                        hurry = True
                        break
                time.sleep(0.05)
            if hurry:
                continue
        rc = self.proc.wait(10)
        return self._finish(rc, requested=True)

    def _finish(self, rc: int, requested: bool) -> int:
        # The master waits for its workers; if it was killed, workers may be left over.
        if self._kill_group(0):
            time.sleep(1.0)
            if self._kill_group(signal.SIGKILL):
                say("killed nginx processes left behind by the master")
        if rc < 0:
            say(f"nginx was killed by {_signal_name(-rc)}")
            return 128 - rc
        if not requested:
            say(f"nginx exited on its own with status {rc}")
        elif rc:
            say(f"nginx exited with status {rc}")
        return rc


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run WSGI applications inside nginx (ngx_http_wsgi_module).")
    parser.add_argument("--version", action="version", version=f"{PROG} {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="serve a WSGI application with nginx in the foreground",
        description="Write an nginx configuration for APP into a server root, check it with "
                    "nginx -t and run nginx in the foreground with ngx_http_wsgi_module.")
    serve.add_argument("app", metavar="APP",
                       help="path/to/wsgi.py[:callable] or package.module[:callable] "
                            "(the callable defaults to 'application')")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument("--workers", default="2",
                       help="nginx worker processes, a number or 'auto' (default: 2)")
    serve.add_argument("--threads", type=int, default=None,
                       help="Python threads per worker, wsgi_threads; 0 = inline "
                            "(default: the module's, 16)")
    serve.add_argument("--timeout", default=None,
                       help="wsgi_timeout, e.g. 30s (default: the module's, 60s)")
    serve.add_argument("--venv", default=os.environ.get("VIRTUAL_ENV") or None,
                       help="virtualenv the application imports from, wsgi_python_home "
                            "(default: $VIRTUAL_ENV); without --module, the module built "
                            "for its Python version is used")
    serve.add_argument("--python-path", action="append", default=[], metavar="DIR",
                       help="directory prepended to sys.path (wsgi_python_path), repeatable "
                            "(default: the script's directory, or the current directory "
                            "for a module APP)")
    serve.add_argument("--static", action="append", default=[], metavar="/URL=DIR",
                       help="serve DIR (or a single file) at /URL with nginx, repeatable")
    serve.add_argument("--status", metavar="/URL",
                       help="answer the workers' wsgi_status JSON at /URL (loopback clients only)")
    serve.add_argument("--reload", action="store_true",
                       help="reload nginx when a Python file of the app changes "
                            "(polled every second)")
    serve.add_argument("--access-log", action="store_true",
                       help="write the access log to the terminal (stdout)")
    serve.add_argument("--log-level", default="notice",
                       choices=["debug", "info", "notice", "warn", "error", "crit"],
                       help="error log level; the error log goes to stderr (default: notice)")
    serve.add_argument("--max-body-size", default="10m",
                       help="client_max_body_size, the largest request body (default: 10m)")
    serve.add_argument("--nginx", default=DEFAULT_NGINX,
                       help=f"the nginx binary (default: {DEFAULT_NGINX})")
    serve.add_argument("--module", default=None,
                       help=f"ngx_http_wsgi_module.so (default: the one built for the "
                            f"Python of --venv: {SYSTEM_MODULE}, or build/debian/ (3.11) or "
                            "build/py3.X/ of this source tree; without --venv "
                            f"{SYSTEM_MODULE} if it exists, else build/debian/)")
    serve.add_argument("--server-root", default=None, metavar="DIR",
                       help="directory for nginx.conf, the pid file and temp files; "
                            "(default: a fresh temporary directory, removed at exit)")
    serve.add_argument("--user", default=None, metavar="USER[:GROUP]",
                       help="when run as root: the user nginx workers (and the app) run as; "
                            "(default: root)")
    serve.add_argument("--graceful-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="how long a stop waits for requests in progress (default: 5)")
    serve.add_argument("--print-config", action="store_true",
                       help="print the generated nginx.conf and exit")
    return parser


def settings_from_args(args) -> Settings:
    app = parse_app(args.app)

    venv = None
    if args.venv:
        venv = Path(os.path.abspath(os.path.expanduser(args.venv)))
        if not venv.is_dir():
            raise UsageError(f"--venv {venv}: not a directory")

    module = None
    if args.module:
        module = Path(os.path.abspath(os.path.expanduser(args.module)))
    elif venv:
        # The module must embed the venv's Python: pick the one built for it.
        module = module_for_venv(venv)
    if module is None:
        module = SYSTEM_MODULE if SYSTEM_MODULE.is_file() else REPO_MODULE
    nginx = args.nginx
    if "/" not in nginx:
        nginx = shutil.which(nginx) or nginx
    else:
        nginx = os.path.abspath(nginx)

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: not a TCP port")
    if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) > 0):
        raise UsageError(f"--workers {args.workers!r}: a positive number or 'auto'")
    if args.threads is not None and args.threads < 0:
        raise UsageError("--threads must be >= 0")
    if args.timeout is not None and not re.fullmatch(r"[0-9]+(ms|s|m|h|d)?", args.timeout):
        raise UsageError(f"--timeout {args.timeout!r}: an nginx time such as 30s or 2m")
    if not re.fullmatch(r"[0-9]+[kKmMgG]?", args.max_body_size):
        raise UsageError(f"--max-body-size {args.max_body_size!r}: a size such as 10m")

    python_path = [Path(os.path.abspath(os.path.expanduser(p))) for p in args.python_path]
    if not python_path:
        python_path = [app.default_python_path]

    user = args.user
    if os.geteuid() == 0:
        user = user or "root"
    elif user:
        raise UsageError("--user only makes sense when ngx-wsgi runs as root")

    if args.server_root:
        server_root = Path(os.path.abspath(os.path.expanduser(args.server_root)))
    else:
        # Only a placeholder for --print-config; serve makes a fresh directory.
        server_root = Path(tempfile.gettempdir()) / f"{PROG}-{args.port}"

    return Settings(
        app=app, server_root=server_root, module=module, nginx=nginx, host=args.host,
        port=args.port, workers=args.workers, threads=args.threads, timeout=args.timeout,
        venv=venv, python_path=python_path, static=[parse_static(v) for v in args.static],
        status=parse_status_url(args.status),
        access_log=args.access_log, log_level=args.log_level,
        max_body_size=args.max_body_size, graceful_timeout=max(0.0, args.graceful_timeout),
        user=user,
    )


def watch_roots(s: Settings) -> list:
    roots = []
    if s.app.script:
        roots.append(s.app.script.parent)
    else:
        found = module_location(s.app.module, s.python_path)
        if found:
            roots.append(found)
        else:
            say(f"--reload: {s.app.module} not found on the python path; watching the "
                "python path only")
    roots += s.python_path
    return roots


def serve(args) -> int:
    s = settings_from_args(args)
    if os.path.isfile(s.nginx):
        s.compiled_out = nginx_compiled_out(s.nginx)

    if args.print_config:
        sys.stdout.write(render_config(s))
        return 0

    if not (os.path.isfile(s.nginx) and os.access(s.nginx, os.X_OK)):
        raise UsageError(f"nginx binary {s.nginx} not found (use --nginx PATH)")
    if not s.module.is_file():
        tried = s.module if args.module else f"{SYSTEM_MODULE} and {REPO_MODULE}"
        raise UsageError(f"ngx_http_wsgi_module.so not found ({tried}); install "
                         "libnginx-mod-http-wsgi, run 'make build-debian', or use --module PATH")
    info = module_info(s.module)
    if s.venv and info["libpython"]:
        venv_ver = venv_python_version(s.venv)
        if venv_ver and venv_ver != info["libpython"]:
            say(f"warning: {s.venv} is a Python {venv_ver} virtualenv but the module embeds "
                f"Python {info['libpython']}; its packages may not import")

    temporary = args.server_root is None
    if temporary:
        s.server_root = Path(tempfile.mkdtemp(prefix=f"{PROG}-"))
    else:
        s.server_root.mkdir(parents=True, exist_ok=True)
    try:
        if s.user and s.user.split(":")[0] != "root":
            # Workers run as that user: let them into the server root (temp files).
            shutil.chown(s.server_root, user=s.user.split(":")[0])
        s.conf_path.write_text(render_config(s))
        watcher = None
        if args.reload:
            exclude = [s.server_root, s.venv]
            watcher = Watcher(watch_roots(s), exclude)
        runner = Runner(s, watcher)
        rc = runner.check_config()
        if rc != 0:
            return rc
        return runner.run(nginx_version(s.nginx), info)
    finally:
        if temporary:
            shutil.rmtree(s.server_root, ignore_errors=True)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
    except UsageError as exc:
        say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
