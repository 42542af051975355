"""Test harness: run a real nginx (with ngx_http_wsgi_module loaded) in a temp prefix.

Everything here is plain Python so that the tests read like a description of
what a person would do by hand: write an nginx.conf, start nginx, send HTTP
requests, read error.log, look at the processes in /proc.

Main pieces:

* ``Flavor`` - one nginx binary plus the module .so built for it
  (``debian`` = the distribution's nginx 1.22, ``vendored`` = nginx 1.28 built
  by the project).
* ``NginxServer`` - writes ``<prefix>/conf/nginx.conf`` around an http-block
  snippet, starts/reloads/stops nginx and inspects its logs and processes.
* ``raw_http`` / ``RawResponse`` - a tiny HTTP/1.x client on a bare socket, for
  the cases where ``requests`` hides what we want to see (chunk framing,
  HEAD bodies, HTTP/1.0, repeated request headers, arrival times).
* ``Case`` / ``check`` / ``run_cases`` / ``serve_cases`` / ``expect_emerg`` -
  declarative tests in the style of Perl's Test::Nginx: a configuration fragment,
  requests, and the responses (status, body, headers, error-log lines) expected.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import requests

ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = ROOT / "tests"
APPS_DIR = TESTS_DIR / "apps"
BUILD_DIR = ROOT / "build"
# The virtualenv that has flask/django; also the one pytest runs in.
TEST_VENV = Path(os.environ.get("NGX_WSGI_TEST_VENV", str(BUILD_DIR / "venv")))
SYSTEM_PYTHON = "/usr/bin/python3.11"

DEFAULT_TIMEOUT = 30.0

# error.log lines that must never appear in a healthy run.
BAD_LOG_PATTERNS = [
    re.compile(r"\[(alert|crit|emerg)\]"),
    re.compile(r"exited on signal"),
]


# --------------------------------------------------------------------------
# Flavours
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Flavor:
    name: str
    nginx: Path
    module: Path
    # The Python the module embeds, and the virtualenv made from it (tests/requirements.txt)
    # that the tests use as wsgi_python_home (@VENV@).
    python: Path = Path(SYSTEM_PYTHON)
    venv: Path = TEST_VENV
    python_version: str = "3.11"

    @property
    def venv_python(self) -> Path:
        return self.venv / "bin" / "python"

    def missing(self) -> Optional[str]:
        """Why this flavour cannot run, or None when binary, module (and for the other
        Pythons' flavours, their interpreter and virtualenv) exist."""
        problems = []
        if not self.nginx.is_file():
            problems.append(f"nginx binary {self.nginx} not found")
        if not self.module.is_file():
            problems.append(f"module {self.module} not found"
                            + (f" (make build-py{self.python_version})"
                               if self.name.startswith("py") else ""))
        # build/venv (the one pytest runs in) is checked by the tests that use it; another
        # Python's flavour cannot run without its own.
        if self.venv != TEST_VENV and not self.python.is_file():
            problems.append(f"Python {self.python} not found")
        if self.venv != TEST_VENV and not self.venv_python.is_file():
            problems.append(f"virtualenv {self.venv} not found"
                            + (f" (make venv-py{self.python_version})"
                               if self.name.startswith("py") else ""))
        return "; ".join(problems) or None

    def compiled_out(self) -> set:
        """Names of standard http modules configured with --without-... in this binary."""
        return _compiled_out(str(self.nginx))


def _load_launcher():
    """tools/ngx_wsgi_cli.py (a script, not a package) imported from its path: the tests
    probe nginx (``-V``, ``-h``, ``-v``) with the launcher's own functions."""
    path = ROOT / "tools" / "ngx_wsgi_cli.py"
    spec = importlib.util.spec_from_file_location("ngx_wsgi_cli", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ngx_wsgi_cli", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


launcher = _load_launcher()


@functools.lru_cache(maxsize=None)
def supports_error_log_option(nginx: str) -> bool:
    """Whether ``nginx -e file`` exists (nginx >= 1.19.5)."""
    return launcher.nginx_has_e_option(nginx)


@functools.lru_cache(maxsize=None)
def _compiled_out(nginx: str) -> frozenset:
    return frozenset(launcher.nginx_compiled_out(nginx))


@functools.lru_cache(maxsize=None)
def nginx_version(nginx: str) -> tuple:
    """(major, minor, patch) of an nginx binary, from ``nginx -v``."""
    text = launcher.nginx_version(nginx)
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    assert match, f"no version in the output of {nginx} -v: {text!r}"
    return tuple(int(x) for x in match.groups())


# Other CPythons (issue 12): Debian's nginx with build/py3.X/ngx_http_wsgi_module.so, the
# module built for that Python (`make build-py3.X`), and build/venv-py3.X, a virtualenv made
# from it (`make venv-py3.X`). NGX_WSGI_PYTHON3_12 / NGX_WSGI_PYTHON3_13 name other
# interpreters (the Makefile's PYTHON3.12 / PYTHON3.13), NGX_WSGI_PYTHON3_N adds py3.N.
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
EXTRA_PYTHONS = {
    "3.12": PYENV_VERSIONS / "3.12.1" / "bin" / "python3.12",
    "3.13": PYENV_VERSIONS / "3.13.0" / "bin" / "python3.13",
}
for _key, _value in os.environ.items():  # NGX_WSGI_PYTHON3_14=... adds a py3.14 flavour
    _match = re.fullmatch(r"NGX_WSGI_PYTHON3_([0-9]+)", _key)
    if _match and _value:
        EXTRA_PYTHONS[f"3.{_match.group(1)}"] = Path(_value)

FLAVORS = {
    "debian": Flavor("debian", Path("/usr/sbin/nginx"),
                     BUILD_DIR / "debian" / "ngx_http_wsgi_module.so"),
    "vendored": Flavor("vendored", BUILD_DIR / "vendored" / "nginx",
                       BUILD_DIR / "vendored" / "ngx_http_wsgi_module.so"),
}
for _version, _python in EXTRA_PYTHONS.items():
    FLAVORS[f"py{_version}"] = Flavor(
        f"py{_version}", Path("/usr/sbin/nginx"),
        BUILD_DIR / f"py{_version}" / "ngx_http_wsgi_module.so",
        python=_python, venv=BUILD_DIR / f"venv-py{_version}", python_version=_version)


def selected_flavor_names() -> list:
    names = [n.strip() for n in os.environ.get("NGX_WSGI_FLAVORS", "debian,vendored").split(",")]
    return [n for n in names if n]


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def token() -> str:
    """A short random marker for one request's log lines and state files."""
    return uuid.uuid4().hex[:12]


def proc_stat(pid: int) -> Optional[tuple]:
    """(state, ppid) of a process from /proc/<pid>/stat, None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def pid_alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children_of(ppid: int) -> set:
    """Live (non-zombie) processes whose parent is ``ppid``."""
    kids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_stat(int(entry))
        if st and st[1] == ppid and st[0] not in ("Z", "X"):
            kids.add(int(entry))
    return kids


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` value such as VmRSS or VmHWM from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM of a process (``echo 5 > /proc/pid/clear_refs``); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def find_line(path: Path, needle: str) -> int:
    """1-based number of the first line of ``path`` containing ``needle``."""
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not found in {path}")


# --------------------------------------------------------------------------
# Raw HTTP over a socket
# --------------------------------------------------------------------------

def build_request(method: str, path: str, headers: Iterable = (), body: bytes = b"",
                  version: str = "HTTP/1.1", host: str = "127.0.0.1",
                  close: bool = True) -> bytes:
    """Bytes of one HTTP request; ``headers`` is a list of (name, value) pairs
    (repeats allowed, sent in order)."""
    lines = [f"{method} {path} {version}", f"Host: {host}"]
    for name, value in headers:
        lines.append(f"{name}: {value}")
    if close:
        lines.append("Connection: close")
    names = {n.lower() for n, _ in headers}
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def decode_chunked(data: bytes) -> tuple:
    """Decode a chunked body: (payload, complete) where ``complete`` is True only
    when the terminating zero-size chunk was seen."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        size_text = data[pos:eol].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(out), False
        if size == 0:
            # Last chunk; it must be followed by (optional trailers and) CRLF.
            return bytes(out), data.find(b"\r\n", eol + 2) >= 0
        start = eol + 2
        chunk = data[start:start + size]
        out += chunk
        if len(chunk) < size or data[start + size:start + size + 2] != b"\r\n":
            return bytes(out), False
        pos = start + size + 2


@dataclass
class RawResponse:
    """A response read from a bare socket until the server closed it."""
    raw: bytes
    events: list  # [(seconds since the request was sent, bytes received)]
    local_port: int = 0  # the client's port, as the server should see it in REMOTE_PORT
    status: int = 0
    status_line: str = ""
    headers: list = field(default_factory=list)
    head_bytes: bytes = b""
    raw_body: bytes = b""

    def __post_init__(self):
        sep = self.raw.find(b"\r\n\r\n")
        if sep < 0:
            raise AssertionError(f"no complete response head in {self.raw[:300]!r}")
        self.head_bytes = self.raw[:sep]
        self.raw_body = self.raw[sep + 4:]
        lines = self.head_bytes.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        parts = self.status_line.split(" ", 2)
        self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.append((name.strip(), value.strip()))

    def header(self, name: str) -> Optional[str]:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    @property
    def chunked(self) -> bool:
        return (self.header("Transfer-Encoding") or "").lower() == "chunked"

    @property
    def body(self) -> bytes:
        """Body with the transfer coding removed."""
        return decode_chunked(self.raw_body)[0] if self.chunked else self.raw_body

    @property
    def complete(self) -> bool:
        """True when the body was delimited properly (terminating chunk or full length)."""
        if self.chunked:
            return decode_chunked(self.raw_body)[1]
        length = self.header("Content-Length")
        if length is not None:
            return len(self.raw_body) == int(length)
        return True

    def arrival_time(self, marker: bytes) -> float:
        """Seconds after sending at which the received bytes first contained ``marker``."""
        seen = b""
        for t, data in self.events:
            seen += data
            if marker in seen:
                return t
        raise AssertionError(f"{marker!r} never arrived; got {self.raw[:500]!r}")

    @property
    def end_time(self) -> float:
        return self.events[-1][0] if self.events else 0.0


def raw_http(port: int, request: bytes, timeout: float = DEFAULT_TIMEOUT) -> RawResponse:
    """Send ``request`` and read until the server closes the connection."""
    events = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        local_port = sock.getsockname()[1]
        t0 = time.monotonic()
        sock.sendall(request)
        deadline = t0 + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"response not finished within {timeout}s")
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError(f"server sent nothing for {timeout}s; "
                                     f"so far: {b''.join(d for _, d in events)[:500]!r}")
            if not data:
                break
            events.append((time.monotonic() - t0, data))
    return RawResponse(b"".join(d for _, d in events), events, local_port)


# --------------------------------------------------------------------------
# The nginx server
# --------------------------------------------------------------------------

LIVE_SERVERS: "set[NginxServer]" = set()
_live_lock = threading.Lock()


class NginxServer:
    """One nginx instance in its own prefix directory.

    ``http_conf`` is the text placed inside ``http { ... }``. These
    placeholders are substituted in it (and in ``main_conf``, the text placed
    at the top level of nginx.conf):

    ``@PORT@``   the port picked for this server
    ``@PREFIX@`` the prefix directory
    ``@APPS@``   tests/apps
    ``@PYLIB@``  <prefix>/pylib, holding a generated ``ngxtest_settings`` module
                 (``STATE_DIR``, ``PORT``) that fixture apps import
    ``@STATE@``  <prefix>/state, a scratch directory the apps write into
    ``@VENV@``   the flavour's test virtualenv (build/venv, or build/venv-py3.X)

    The constructor only prepares the directories; call ``start()``.
    """

    def __init__(self, flavor: Flavor, prefix: Path, http_conf: str, main_conf: str = "",
                 worker_processes: int = 2):
        self.flavor = flavor
        self.prefix = Path(prefix).resolve()
        self.port = free_port()
        self.worker_processes = worker_processes
        self.main_conf_template = main_conf
        self.http_conf_template = http_conf
        self.master_pid: Optional[int] = None
        self.allow_bad_log = False      # set by tests that expect [alert]/[crit] lines
        self.forbidden_log_patterns: list = []  # extra regexes checked like BAD_LOG_PATTERNS
        self._checked = {}              # log file -> offset up to which it was checked
        self._t_count = 0
        for sub in ("conf", "logs", "tmp", "html", "pylib", "state"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        (self.pylib / "ngxtest_settings.py").write_text(
            '"""Generated by tests/harness.py for one nginx instance."""\n'
            f"STATE_DIR = {str(self.state_dir)!r}\n"
            f"PORT = {self.port}\n"
        )

    # ---- paths ---------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.prefix / "conf" / "nginx.conf"

    @property
    def error_log_path(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def stderr_log_path(self) -> Path:
        return self.prefix / "logs" / "stderr.log"

    @property
    def pid_path(self) -> Path:
        return self.prefix / "logs" / "nginx.pid"

    @property
    def pylib(self) -> Path:
        return self.prefix / "pylib"

    @property
    def state_dir(self) -> Path:
        return self.prefix / "state"

    # ---- configuration ---------------------------------------------------
    def substitute(self, text: str) -> str:
        for key, value in {
            "@PORT@": str(self.port),
            "@PREFIX@": str(self.prefix),
            "@APPS@": str(APPS_DIR),
            "@PYLIB@": str(self.pylib),
            "@STATE@": str(self.state_dir),
            "@VENV@": str(self.flavor.venv),
        }.items():
            text = text.replace(key, value)
        return text

    def render_conf(self, http_conf: str, main_conf: str = "",
                    error_log: Optional[Path] = None) -> str:
        """Full nginx.conf text around an http-block snippet."""
        error_log = error_log or self.error_log_path
        p = self.prefix
        temp_paths = [f"client_body_temp_path {p}/tmp/body;"]
        for mod, directive in (("proxy", "proxy_temp_path"), ("fastcgi", "fastcgi_temp_path"),
                               ("uwsgi", "uwsgi_temp_path"), ("scgi", "scgi_temp_path")):
            if f"http_{mod}" not in self.flavor.compiled_out():
                temp_paths.append(f"{directive} {p}/tmp/{mod};")
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temp_block = "\n    ".join(temp_paths)
        return (
            f"load_module {self.flavor.module};\n"
            f"{user}"
            f"worker_processes {self.worker_processes};\n"
            "daemon on;\n"
            "master_process on;\n"
            f"pid {self.pid_path};\n"
            f"lock_file {p}/logs/nginx.lock;\n"
            f"error_log {error_log} info;\n"
            f"{self.substitute(main_conf)}\n"
            "events {\n    worker_connections 1024;\n}\n"
            "http {\n"
            f"    access_log {p}/logs/access.log;\n"
            f"    {temp_block}\n"
            "    default_type application/octet-stream;\n"
            "    types { text/plain txt; text/html html; }\n"
            f"{self.substitute(http_conf)}\n"
            "}\n"
        )

    def write_conf(self):
        self.conf_path.write_text(self.render_conf(self.http_conf_template,
                                                   self.main_conf_template))

    def nginx_cmd(self, *extra: str, conf: Optional[Path] = None,
                  stderr_log: Optional[Path] = None) -> list:
        cmd = [str(self.flavor.nginx), "-p", f"{self.prefix}/", "-c", str(conf or self.conf_path)]
        if supports_error_log_option(str(self.flavor.nginx)):
            cmd += ["-e", str(stderr_log or self.stderr_log_path)]
        return cmd + list(extra)

    def nginx_t(self, http_conf: str, main_conf: str = "", name: Optional[str] = None) -> tuple:
        """Run ``nginx -t`` on a config built from ``http_conf``; (returncode, output).

        The config is written to ``<prefix>/conf/<name>`` (default ``t-N.conf``);
        the output is stdout + stderr + the startup log given with ``-e``."""
        self._t_count += 1
        name = name or f"t-{self._t_count}.conf"
        conf = self.prefix / "conf" / name
        startup_log = self.prefix / "logs" / f"{name}.stderr.log"
        conf.write_text(self.render_conf(http_conf, main_conf,
                                         error_log=self.prefix / "logs" / f"{name}.error.log"))
        proc = subprocess.run(self.nginx_cmd("-t", conf=conf, stderr_log=startup_log),
                              capture_output=True, text=True, timeout=60)
        log = startup_log.read_text(errors="replace") if startup_log.exists() else ""
        return proc.returncode, proc.stdout + proc.stderr + log

    # ---- process control -------------------------------------------------
    def start(self, timeout: float = 20.0) -> "NginxServer":
        self.write_conf()
        proc = subprocess.run(self.nginx_cmd(), capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(
                f"nginx failed to start (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                f"--- stderr.log ---\n{self.stderr_log()}\n--- error.log ---\n{self.error_log()}")
        self.master_pid = wait_until(self._read_pid, timeout, what="nginx.pid")
        with _live_lock:
            LIVE_SERVERS.add(self)
        wait_until(self._accepts, timeout, what=f"port {self.port} to accept connections")
        wait_until(lambda: len(self.worker_pids()) == self.worker_processes, timeout,
                   what=f"{self.worker_processes} worker processes")
        return self

    def _read_pid(self) -> Optional[int]:
        try:
            return int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.master_pid is not None and pid_alive(self.master_pid)

    def worker_pids(self) -> set:
        """Pids of the master's child processes (the workers)."""
        return children_of(self.master_pid)

    def reload(self, timeout: float = 20.0) -> set:
        """SIGHUP the master and wait until a full set of new workers replaced the old.

        Returns the new worker pids."""
        old = self.worker_pids()
        os.kill(self.master_pid, signal.SIGHUP)

        def replaced():
            now = self.worker_pids()
            return now if (len(now) == self.worker_processes and not now & old) else None

        new = wait_until(replaced, timeout, what="workers to be replaced after reload")
        wait_until(self._accepts, timeout, what="port after reload")
        return new

    def stop(self, timeout: float = 20.0, check_log: bool = True):
        """SIGQUIT (graceful shutdown); SIGKILL and fail if it takes over ``timeout`` s."""
        if self.master_pid is None:
            return
        pid = self.master_pid
        workers = self.worker_pids() if pid_alive(pid) else set()
        try:
            if pid_alive(pid):
                os.kill(pid, signal.SIGQUIT)
                try:
                    wait_until(lambda: not pid_alive(pid), timeout, what="nginx to quit")
                except AssertionError:
                    self.kill()
                    raise AssertionError(f"nginx master {pid} did not exit within {timeout}s "
                                         "of SIGQUIT; killed it")
            wait_until(lambda: not any(pid_alive(w) for w in workers), timeout,
                       what="workers to exit")
        finally:
            with _live_lock:
                LIVE_SERVERS.discard(self)
        if check_log:
            self.check_log()

    def kill(self):
        """Hard stop, for cleanup after failures."""
        pids = set()
        if self.master_pid and pid_alive(self.master_pid):
            pids = self.worker_pids() | {self.master_pid}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        with _live_lock:
            LIVE_SERVERS.discard(self)

    # ---- logs --------------------------------------------------------------
    def error_log(self) -> str:
        try:
            return self.error_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_log(self) -> str:
        try:
            return self.stderr_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The end of error.log, for assertion messages."""
        return "\n".join(self.error_log().splitlines()[-lines:])

    def log_mark(self) -> int:
        """Current size of error.log; pass to ``log_since``."""
        try:
            return self.error_log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int) -> str:
        with open(self.error_log_path, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", errors="replace")

    def wait_log(self, needle, since: int = 0, timeout: float = 5.0) -> str:
        """Wait until ``needle`` (a str, or a compiled regex) appears in error.log
        after offset ``since``; returns the log text after ``since``."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_since(since)
            if (needle.search(text) if isinstance(needle, re.Pattern) else needle in text):
                return text
            if time.monotonic() > deadline:
                shown = needle.pattern if isinstance(needle, re.Pattern) else needle
                raise AssertionError(f"{shown!r} did not appear in error.log within {timeout}s; "
                                     f"new log text:\n{text[-3000:]}")
            time.sleep(0.05)

    def bad_log_lines(self, text: str) -> list:
        patterns = BAD_LOG_PATTERNS + [re.compile(p) for p in self.forbidden_log_patterns]
        return [line for line in text.splitlines() if any(p.search(line) for p in patterns)]

    def check_log(self, allow: bool = False):
        """Assert no alert/crit/emerg/'exited on signal' (or forbidden) lines appeared in
        error.log / stderr.log since the previous check; then move the checkpoint."""
        found = []
        for path in (self.error_log_path, self.stderr_log_path):
            if not path.exists():
                continue
            start = self._checked.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                text = f.read().decode("utf-8", errors="replace")
                self._checked[path] = f.tell()
            found += [f"{path.name}: {line}" for line in self.bad_log_lines(text)]
        if found and not (allow or self.allow_bad_log):
            raise AssertionError("unexpected lines in nginx logs:\n" + "\n".join(found))

    # ---- HTTP ----------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
        return requests.request(method, self.url(path), **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def raw(self, method: str, path: str, headers: Iterable = (), body: bytes = b"",
            version: str = "HTTP/1.1", timeout: float = DEFAULT_TIMEOUT) -> RawResponse:
        """One request on a fresh socket (``Connection: close``), read to EOF."""
        return raw_http(self.port, build_request(method, path, list(headers), body, version),
                        timeout=timeout)

    def __repr__(self):
        return f"<NginxServer {self.flavor.name} port={self.port} prefix={self.prefix}>"


def explain(resp, server: "NginxServer") -> str:
    """Assertion message: the response and the end of error.log."""
    if isinstance(resp, RawResponse):
        what = f"{resp.status_line!r} body={resp.body[:300]!r}"
    else:
        what = f"{resp.status_code} body={resp.text[:300]!r}"
    return f"response {what}\n--- error.log (tail) ---\n{server.log_tail()}"


# --------------------------------------------------------------------------
# Declarative tests, in the spirit of Perl's Test::Nginx
# --------------------------------------------------------------------------

@dataclass
class Case:
    """One request and what its response must be (a Test::Nginx block).

    ``request`` is ``"METHOD /path"`` or ``"METHOD /path HTTP/1.0"``; ``headers``
    (name, value) pairs or a dict, sent in order; ``body`` the request body. ``raw``
    replaces all that with the exact bytes to send. The request goes over a fresh socket
    (``Connection: close``) and the response is read to EOF.

    Expectations (unset ones are not checked):

    ``expect_status``   the status code
    ``expect_body``     the body without its transfer coding: bytes or str (exact), or a
                        compiled regex searched in the text
    ``expect_json``     a dict: these keys of the JSON body have these values
    ``expect_headers``  name -> str (exact value), regex (searched), True (present) or
                        None (absent)
    ``expect_log``      strs or regexes that must appear in error.log after the request
                        was sent (waited for)
    ``expect_no_log``   strs or regexes that must not be in error.log after the request,
                        checked once the response and the ``expect_log`` lines are in
    ``expect_complete`` True (default): the body was delimited properly (terminating
                        chunk, full length; not checked for HEAD, 1xx, 204 and 304);
                        False: it was cut off; None: not checked
    """
    request: str
    headers: object = ()
    body: bytes = b""
    raw: Optional[bytes] = None
    expect_status: Optional[int] = 200
    expect_body: object = None
    expect_json: Optional[dict] = None
    expect_headers: dict = field(default_factory=dict)
    expect_log: tuple = ()
    expect_no_log: tuple = ()
    expect_complete: Optional[bool] = True
    timeout: float = DEFAULT_TIMEOUT

    def to_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        method, path, *version = self.request.split()
        headers = self.headers.items() if isinstance(self.headers, dict) else self.headers
        body = self.body.encode() if isinstance(self.body, str) else self.body
        return build_request(method, path, list(headers), body, *(version or ["HTTP/1.1"]))


def _found(needle, text: str) -> bool:
    return bool(needle.search(text)) if isinstance(needle, re.Pattern) else needle in text


def check(server: "NginxServer", case: Case) -> RawResponse:
    """Send ``case``'s request to ``server`` and assert its expectations; the response."""
    mark = server.log_mark()
    resp = raw_http(server.port, case.to_bytes(), timeout=case.timeout)
    why = f"{case.request}: {explain(resp, server)}"
    if case.expect_status is not None:
        assert resp.status == case.expect_status, f"status != {case.expect_status}; {why}"
    want = case.expect_body
    if isinstance(want, re.Pattern):
        assert want.search(resp.body.decode("utf-8", "replace")), f"body !~ {want.pattern!r}; {why}"
    elif want is not None:
        want = want.encode() if isinstance(want, str) else want
        assert resp.body == want, f"body {resp.body[:500]!r} != {want[:500]!r}; {why}"
    if case.expect_json is not None:
        doc = json.loads(resp.body)
        got = {key: doc.get(key) for key in case.expect_json}
        assert got == case.expect_json, f"JSON {got} != {case.expect_json}; {why}"
    for name, value in case.expect_headers.items():
        got = resp.header(name)
        if value is None:
            assert got is None, f"header {name}: {got!r} should be absent; {why}"
        elif value is True:
            assert got is not None, f"header {name} missing: {resp.headers}; {why}"
        elif isinstance(value, re.Pattern):
            assert got is not None and value.search(got), f"header {name}: {got!r}; {why}"
        else:
            assert got == value, f"header {name}: {got!r} != {value!r}; {why}"
    method = case.request.split()[0] if case.raw is None else ""
    if case.expect_complete is False:
        assert not resp.complete, f"a cut-off response looks complete; {why}"
    elif case.expect_complete and method != "HEAD" and not (
            resp.status < 200 or resp.status in (204, 304)):
        assert resp.complete, f"body not properly delimited: {resp.raw_body[-200:]!r}; {why}"
    for needle in case.expect_log:
        server.wait_log(needle, since=mark)
    text = server.log_since(mark)
    for needle in case.expect_no_log:
        assert not _found(needle, text), f"{needle!r} in error.log:\n{text[-3000:]}"
    return resp


def run_cases(server: "NginxServer", cases: Iterable[Case]) -> list:
    """``check`` each case in order against one server; the responses."""
    return [check(server, case) for case in cases]


def wrap_config(config: str, http: str = "") -> str:
    """An http-block snippet from a fragment: used as is when it has its own
    ``server {`` block, else placed inside ``server { listen 127.0.0.1:@PORT@; ... }``.
    ``http`` is text put before it, at http level."""
    if not re.search(r"^\s*server\s*\{", config, re.M):
        config = ("    server {\n        listen 127.0.0.1:@PORT@;\n        server_name localhost;\n"
                  f"        {config.strip()}\n    }}\n")
    return f"    {http.strip()}\n{config}" if http else config


def serve_cases(servers, config: str, cases: Iterable[Case] = (), http: str = "",
                **kwargs) -> "NginxServer":
    """Start nginx (``servers`` is the ``nginx_servers`` or ``nginx_module_servers``
    factory; ``kwargs`` go to it) with ``wrap_config(config, http)``, ``check`` each case,
    and return the running server."""
    server = servers(wrap_config(config, http), **kwargs)
    run_cases(server, cases)
    return server


def emerg_lines(output: str) -> list:
    return [line for line in output.splitlines() if "[emerg]" in line]


def expect_emerg(checker: "NginxServer", config: str, *needles, at: Optional[str] = None,
                 http: str = "", main: str = "", name: Optional[str] = None) -> list:
    """``nginx -t`` on ``wrap_config(config, http)`` (and ``main`` at top level) fails
    with an [emerg] line holding every needle (str or regex) and, with ``at``,
    ``<conf file>:<line>`` of the first line of the configuration containing ``at``.
    Returns all the [emerg] lines. ``checker`` is an unstarted NginxServer (the
    ``checker`` fixture)."""
    rc, output = checker.nginx_t(wrap_config(config, http), main, name=name)
    assert rc != 0, f"nginx -t passed:\n{output}"
    lines = emerg_lines(output)
    where = None
    if at is not None:
        conf = checker.prefix / "conf" / (name or f"t-{checker._t_count}.conf")
        where = f"{conf}:{find_line(conf, at)}"
    matching = [line for line in lines if all(_found(n, line) for n in needles)
                and (where is None or where in line)]
    shown = [n.pattern if isinstance(n, re.Pattern) else n for n in needles]
    assert matching, f"no [emerg] line with {shown} and {where!r}:\n{output}"
    return lines


def expect_config_ok(checker: "NginxServer", config: str, http: str = "", main: str = "",
                     name: Optional[str] = None) -> str:
    """``nginx -t`` on ``wrap_config(config, http)`` passes with no [emerg] line; the output."""
    rc, output = checker.nginx_t(wrap_config(config, http), main, name=name)
    assert rc == 0, output
    assert "syntax is ok" in output and "test is successful" in output, output
    assert not emerg_lines(output), output
    return output


def install_twins(server: "NginxServer", names=("a", "b")) -> list:
    """Copy tests/apps/twin.py to ``<prefix>/twins/<name>/wsgi.py`` for each name (before
    ``start()``): script apps with the same file name and the same globals, each with its
    identity taken from its directory. Mount them as ``@PREFIX@/twins/<name>/wsgi.py``."""
    paths = []
    for twin in names:
        target = server.prefix / "twins" / twin / "wsgi.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((APPS_DIR / "twin.py").read_bytes())
        paths.append(target)
    return paths


def make_venv_with_module(target: Path, module_name: str, source: str,
                          flavor: Optional[Flavor] = None) -> Path:
    """A bare virtualenv (no pip) of the flavour's Python (default: Debian's 3.11) whose
    site-packages holds ``<module_name>.py``."""
    python = str(flavor.python) if flavor else SYSTEM_PYTHON
    version = flavor.python_version if flavor else "3.11"
    subprocess.run([python, "-m", "venv", "--without-pip", str(target)], check=True,
                   timeout=120, capture_output=True)
    site = target / "lib" / f"python{version}" / "site-packages"
    assert site.is_dir(), f"no site-packages in {target}"
    (site / f"{module_name}.py").write_text(source)
    return site

