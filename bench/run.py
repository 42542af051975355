#!/usr/bin/env python3
"""ngx-wsgi benchmark: ngx_http_wsgi_module against nginx itself and the usual WSGI servers.

    python3 bench/run.py            full run (about 13 minutes on 2 cores)
    python3 bench/run.py --quick    fewer configurations and workloads, shorter (under 3 minutes)
    python3 bench/run.py --list     the configurations and workloads, then exit

Only the standard library is used here. The peers (gunicorn, uWSGI, Granian, bjoern) and
matplotlib for the chart are installed into a throwaway virtualenv, build/bench-venv, made
from /usr/bin/python3.11; a peer that will not install is reported as skipped. Every server
is started by this script on 127.0.0.1 ports, in a session of its own, and stopped by it
(also on Ctrl-C or an error): it never signals a process it did not start.

Results go to bench/results/: latest.md, latest.json, latest.png (latest-quick.* for
--quick) and a dated copy of each. See bench/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
APPS = BENCH / "apps"
BUILD = ROOT / "build"
VENV = BUILD / "bench-venv"
WORK = BUILD / "bench"             # data files, server prefixes and logs of the last run
DATA = WORK / "data"
RUNDIR = WORK / "run"
RESULTS = BENCH / "results"
WRK_SCRIPT = BENCH / "wrk" / "report.lua"
SYSTEM_PYTHON = "/usr/bin/python3.11"
DEBIAN_NGINX = Path("/usr/sbin/nginx")
DEBIAN_MODULE = BUILD / "debian" / "ngx_http_wsgi_module.so"
VENDORED_NGINX = BUILD / "vendored" / "nginx"
VENDORED_MODULE = BUILD / "vendored" / "ngx_http_wsgi_module.so"

WORKERS = 2            # worker processes of every server
WSGI_THREADS = 16      # the module's wsgi_threads default
GTHREAD_THREADS = 16   # gunicorn gthread threads per worker, as wsgi_threads' default
MIXED_PER_THREAD = 4   # mixed: sleeping connections per Python thread (see measure_mixed)
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    path: str
    expect_len: int            # body length the check expects from a WSGI server
    body_bytes: int = 0        # > 0: POST a body of this size
    ceiling_expect_len: Optional[int] = None   # what nginx's ceiling location answers
    ceiling_note: str = ""
    background: Optional["Workload"] = None    # mixed: the load that keeps the app asleep
    background_sleep_s: float = 0.0            # how long each of its requests sleeps


MIB = 1024 * 1024
WORKLOADS = [
    Workload("hello", "hello world (13 bytes)", "/hello", 13),
    Workload("64k", "64 KiB body", "/64k", 64 * 1024,
             ceiling_note="static 64 KiB file"),
    Workload("sleep", "app sleeps 1 ms", "/sleep", 10, ceiling_expect_len=10,
             ceiling_note="`return 200`, no sleep: not a like-for-like ceiling"),
    Workload("echo", "1 MiB POST echoed", "/echo", MIB, body_bytes=MIB, ceiling_expect_len=2,
             ceiling_note="`return 200`: body read and discarded, nothing echoed"),
    Workload("file", "10 MiB file via wsgi.file_wrapper", "/file", 10 * MIB,
             ceiling_note="static 10 MiB file (sendfile)"),
    Workload("stream", "streamed, 100 chunks of 1 KiB", "/stream", 100 * 1024,
             ceiling_note="static 100 KiB file"),
    Workload("mixed", "return 200 while every app thread sleeps", "/r200", 2,
             ceiling_note="the same location, no application behind it: the baseline",
             background=Workload("sleep100", "app sleeps 100 ms", "/sleep100", 12),
             background_sleep_s=0.1),
]
WORKLOAD_BY_KEY = {w.key: w for w in WORKLOADS}
QUICK_WORKLOADS = ["hello", "64k", "sleep"]


# ---------------------------------------------------------------------------------------
# Processes: start in a session of their own, stop only what we started
# ---------------------------------------------------------------------------------------

def proc_stat(pid: int) -> Optional[list]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def session_members(sid: int) -> list:
    """Live processes whose session id is ``sid`` (a session this script created)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and int(st[3]) == sid and st[0] not in ("Z", "X"):
                pids.append(int(entry))
    return pids


class Proc:
    """A server process started with ``start_new_session``: it and everything it forks share
    the session id ``pid``, which is how they are found and stopped."""

    def __init__(self, name: str, argv: list, logfile: Path, cwd: Optional[Path] = None,
                 env: Optional[dict] = None, stop_signal: int = signal.SIGTERM):
        self.name = name
        self.argv = argv
        self.logfile = logfile
        self.stop_signal = stop_signal
        logfile.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(logfile, "ab")
        self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def members(self) -> list:
        return session_members(self.pid)

    def stop(self, grace: float = 8.0) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not self.members():
                break
            time.sleep(0.05)
        for pid in self.members():     # whatever is left of this session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.popen.poll() is None:
            self.popen.kill()
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


LIVE: list = []          # every Proc not yet stopped, for the cleanup on exit


def start_proc(*args, **kwargs) -> Proc:
    p = Proc(*args, **kwargs)
    LIVE.append(p)
    return p


def stop_all() -> None:
    while LIVE:
        p = LIVE.pop()
        try:
            p.stop(grace=3.0)
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            log(f"  ! stopping {p.name} (pid {p.pid}): {e}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, procs: list, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with status {p.popen.returncode} "
                                   f"(log: {p.logfile})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f}s")
        time.sleep(0.05)


def http_request(port: int, wl: Workload, timeout: float = 30.0) -> tuple:
    """One request of the workload: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = b"b" * wl.body_bytes if wl.body_bytes else None
        headers = {"Content-Type": "application/octet-stream"} if body else {}
        conn.request("POST" if body else "GET", wl.path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(port: int, procs: list, timeout: float = 40.0) -> None:
    """The port accepts and /hello answers 200 (Python servers import the app lazily)."""
    wait_port(port, procs, timeout)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status, _ = http_request(port, WORKLOAD_BY_KEY["hello"], timeout=10)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as e:
            last = str(e)
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited (log: {p.logfile})")
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not ready: {last}")


# ---------------------------------------------------------------------------------------
# Peak RSS of a server's process tree, sampled
# ---------------------------------------------------------------------------------------

class RssSampler(threading.Thread):
    """Samples the summed VmRSS of every process of the given sessions every ``interval`` s
    and keeps the peak (kB). The process list is refreshed once a second."""

    def __init__(self, procs: list, interval: float = 0.2):
        super().__init__(daemon=True)
        self.procs = procs
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._halt = threading.Event()

    def _pids(self) -> list:
        pids = []
        for p in self.procs:
            pids.extend(p.members())
        return pids

    def run(self) -> None:
        pids, refreshed = self._pids(), time.monotonic()
        while not self._halt.is_set():
            if time.monotonic() - refreshed > 1.0:
                pids, refreshed = self._pids(), time.monotonic()
            total = 0
            for pid in pids:
                try:
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
                except (OSError, IndexError, ValueError):
                    pass
            self.peak_kb = max(self.peak_kb, total)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join(timeout=5)
        return self.peak_kb


# ---------------------------------------------------------------------------------------
# nginx configurations
# ---------------------------------------------------------------------------------------

UWSGI_PARAMS = """
            uwsgi_param QUERY_STRING    $query_string;
            uwsgi_param REQUEST_METHOD  $request_method;
            uwsgi_param CONTENT_TYPE    $content_type;
            uwsgi_param CONTENT_LENGTH  $content_length;
            uwsgi_param REQUEST_URI     $request_uri;
            uwsgi_param PATH_INFO       $document_uri;
            uwsgi_param DOCUMENT_ROOT   $document_root;
            uwsgi_param SERVER_PROTOCOL $server_protocol;
            uwsgi_param REQUEST_SCHEME  $scheme;
            uwsgi_param REMOTE_ADDR     $remote_addr;
            uwsgi_param REMOTE_PORT     $remote_port;
            uwsgi_param SERVER_PORT     $server_port;
            uwsgi_param SERVER_NAME     $server_name;"""


def nginx_conf(prefix: Path, port: int, locations: str, module: Optional[Path] = None,
               http_extra: str = "") -> Path:
    for d in ("logs", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    load = f"load_module {module};\n" if module else ""
    text = f"""# written by bench/run.py
{load}daemon off;
master_process on;
worker_processes {WORKERS};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;

events {{ worker_connections 4096; }}

http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    client_max_body_size 4m;
    client_body_buffer_size 2m;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
{http_extra}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        server_name bench;
{locations}
    }}
}}
"""
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def start_nginx(name: str, binary: Path, prefix: Path, conf: Path) -> Proc:
    argv = [str(binary), "-p", str(prefix), "-e", str(prefix / "logs" / "error.log"),
            "-c", str(conf)]
    return start_proc(name, argv, prefix / "logs" / "stdout.log", cwd=prefix)


def ceiling_locations() -> str:
    www = DATA / "www"
    return f"""
        location = /hello {{ default_type text/plain; return 200 "Hello, world!"; }}
        location = /64k {{ alias {www}/64k.bin; }}
        location = /sleep {{ default_type text/plain; return 200 "slept 1 ms"; }}
        location = /echo {{ default_type text/plain; return 200 "ok"; }}
        location = /file {{ alias {DATA}/file-10m.bin; }}
        location = /stream {{ alias {www}/stream-100k.bin; }}
        location = /r200 {{ default_type text/plain; return 200 "ok"; }}"""


def proxy_locations(kind: str) -> str:
    if kind == "uwsgi":
        return f"""
        location / {{
            uwsgi_pass backend;{UWSGI_PARAMS}
        }}"""
    return """
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }"""


def upstream_block(port: int, keepalive: bool) -> str:
    ka = "        keepalive 64;\n" if keepalive else ""
    return f"""    upstream backend {{
        server 127.0.0.1:{port};
{ka}    }}
"""


# ---------------------------------------------------------------------------------------
# Server configurations
# ---------------------------------------------------------------------------------------

@dataclass
class Server:
    port: int
    procs: list
    nginx_logs: list = field(default_factory=list)


@dataclass
class Config:
    key: str
    label: str
    group: str                        # ceiling | ngx-wsgi | proxied | direct (colour in the chart)
    start: Callable[["Config", Path], Server]
    needs: tuple = ()                 # peer packages of build/bench-venv
    files: tuple = ()                 # files that must exist
    in_quick: bool = False
    note: str = ""
    app_threads: int = 0              # the module's Python threads per worker (0: none)


def venv_bin(name: str) -> str:
    return str(VENV / "bin" / name)


def start_ceiling(cfg: Config, prefix: Path) -> Server:
    port = free_port()
    conf = nginx_conf(prefix, port, ceiling_locations())
    p = start_nginx("nginx", DEBIAN_NGINX, prefix, conf)
    return Server(port, [p], [prefix / "logs" / "error.log"])


def wsgi_starter(nginx: Path, module: Path, threads: Optional[int]) -> Callable:
    def start(cfg: Config, prefix: Path) -> Server:
        port = free_port()
        extra = f"    wsgi_python_path {APPS};\n"
        if threads is not None:
            extra += f"    wsgi_threads {threads};\n"
        # /r200: plain nginx in the module's server, for the mixed workload
        locations = f"""
        location / {{
            wsgi_app {APPS}/suite.py;
        }}
        location = /r200 {{ default_type text/plain; return 200 "ok"; }}"""
        conf = nginx_conf(prefix, port, locations, module=module, http_extra=extra)
        p = start_nginx("nginx", nginx, prefix, conf)
        return Server(port, [p], [prefix / "logs" / "error.log"])
    return start


def backend_argv(kind: str, port: int) -> tuple:
    """(argv, cwd, stop signal) of a Python server listening on 127.0.0.1:port."""
    if kind in ("gunicorn-sync", "gunicorn-gthread"):
        argv = [venv_bin("gunicorn"), "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}",
                "--log-level", "warning", "--backlog", "2048", "--chdir", str(APPS)]
        if kind == "gunicorn-sync":
            argv += ["--worker-class", "sync"]
        else:
            argv += ["--worker-class", "gthread", "--threads", str(GTHREAD_THREADS)]
        return argv + ["suite:application"], APPS, signal.SIGTERM
    if kind == "uwsgi":
        return ([venv_bin("uwsgi"), "--master", "--processes", str(WORKERS),
                 "--socket", f"127.0.0.1:{port}", "--chdir", str(APPS),
                 "--module", "suite:application", "--need-app", "--disable-logging",
                 "--die-on-term", "--buffer-size", "32768"], APPS, signal.SIGTERM)
    if kind.startswith("granian"):
        argv = [venv_bin("granian"), "--interface", "wsgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(WORKERS), "--no-ws",
                "--log-level", "warning", "--working-dir", str(APPS)]
        if kind == "granian-bt1":
            argv += ["--blocking-threads", "1"]
        return argv + ["suite:application"], APPS, signal.SIGTERM
    if kind == "bjoern":
        return ([venv_bin("python"), str(BENCH / "peers" / "bjoern_server.py"), "127.0.0.1",
                 str(port), str(WORKERS), "suite:application"], APPS, signal.SIGTERM)
    raise ValueError(kind)


def direct_starter(kind: str) -> Callable:
    def start(cfg: Config, prefix: Path) -> Server:
        port = free_port()
        argv, cwd, sig = backend_argv(kind, port)
        p = start_proc(kind, argv, prefix / "server.log", cwd=cwd, stop_signal=sig)
        return Server(port, [p])
    return start


def proxied_starter(kind: str) -> Callable:
    def start(cfg: Config, prefix: Path) -> Server:
        bport = free_port()
        argv, cwd, sig = backend_argv(kind, bport)
        backend = start_proc(kind, argv, prefix / "backend.log", cwd=cwd, stop_signal=sig)
        wait_port(bport, [backend])
        port = free_port()
        proto = "uwsgi" if kind == "uwsgi" else "http"
        conf = nginx_conf(prefix, port, proxy_locations(proto),
                          http_extra=upstream_block(bport, keepalive=proto == "http"))
        front = start_nginx("nginx", DEBIAN_NGINX, prefix, conf)
        return Server(port, [front, backend], [prefix / "logs" / "error.log"])
    return start


CONFIGS = [
    Config("nginx", "nginx return 200 / static file (ceiling)", "ceiling", start_ceiling,
           files=(DEBIAN_NGINX,), in_quick=True,
           note="Debian nginx alone: `return 200` for hello/sleep/echo/mixed, static files "
                "otherwise"),
    Config("wsgi", "ngx-wsgi threaded, nginx 1.22 (Debian)", "ngx-wsgi",
           wsgi_starter(DEBIAN_NGINX, DEBIAN_MODULE, None),
           files=(DEBIAN_NGINX, DEBIAN_MODULE), in_quick=True, app_threads=WSGI_THREADS,
           note="wsgi_threads default (16) per worker"),
    Config("wsgi-vendored", "ngx-wsgi threaded, nginx 1.28 (vendored)", "ngx-wsgi",
           wsgi_starter(VENDORED_NGINX, VENDORED_MODULE, None),
           files=(VENDORED_NGINX, VENDORED_MODULE), app_threads=WSGI_THREADS,
           note="build/vendored/nginx with build/vendored/ngx_http_wsgi_module.so"),
    Config("wsgi-inline", "ngx-wsgi inline (wsgi_threads 0), Debian", "ngx-wsgi",
           wsgi_starter(DEBIAN_NGINX, DEBIAN_MODULE, 0),
           files=(DEBIAN_NGINX, DEBIAN_MODULE), in_quick=True,
           note="application runs on the event loop"),
    Config("gunicorn-sync", "nginx -> gunicorn sync", "proxied",
           proxied_starter("gunicorn-sync"), needs=("gunicorn",), files=(DEBIAN_NGINX,),
           note="proxy_pass, upstream keepalive (gunicorn sync closes each connection)"),
    Config("gunicorn-gthread", f"nginx -> gunicorn gthread ({GTHREAD_THREADS} threads)", "proxied",
           proxied_starter("gunicorn-gthread"), needs=("gunicorn",), files=(DEBIAN_NGINX,),
           in_quick=True, note="proxy_pass, upstream keepalive 64"),
    Config("uwsgi", "nginx -> uWSGI (uwsgi_pass)", "proxied", proxied_starter("uwsgi"),
           needs=("uwsgi",), files=(DEBIAN_NGINX,), in_quick=True,
           note="2 processes, 1 thread each; the uwsgi protocol has no upstream keepalive"),
    Config("granian", "Granian direct (default)", "direct", direct_starter("granian"),
           needs=("granian",), note="--workers 2; blocking threads: up to 256 per worker "
                                    "(Granian's default for WSGI: backpressure / 2)"),
    Config("granian-bt1", "Granian direct --blocking-threads 1", "direct",
           direct_starter("granian-bt1"), needs=("granian",), in_quick=True,
           note="one Python thread per worker: one request at a time"),
    Config("nginx-granian", "nginx -> Granian (default)", "proxied", proxied_starter("granian"),
           needs=("granian",), files=(DEBIAN_NGINX,), note="proxy_pass, upstream keepalive 64"),
    Config("bjoern", "bjoern direct (2 forked workers)", "direct", direct_starter("bjoern"),
           needs=("bjoern",), note="bench/peers/bjoern_server.py: one socket, 2 forked "
                                   "processes each running bjoern's loop"),
]
CONFIG_BY_KEY = {c.key: c for c in CONFIGS}
REFERENCES = ("nginx", "uwsgi")      # always run: the ratios need them


# ---------------------------------------------------------------------------------------
# Setup: data files and the peers' virtualenv
# ---------------------------------------------------------------------------------------

def make_data() -> None:
    (DATA / "www").mkdir(parents=True, exist_ok=True)

    def ensure(path: Path, size: int, pattern: bytes) -> None:
        if path.is_file() and path.stat().st_size == size:
            return
        data = (pattern * (size // len(pattern) + 1))[:size]
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    ensure(DATA / "file-10m.bin", 10 * MIB, bytes(range(256)))
    ensure(DATA / "www" / "64k.bin", 64 * 1024, b"0123456789abcdef")
    ensure(DATA / "www" / "stream-100k.bin", 100 * 1024, b"x" * 1023 + b"\n")


PEER_PACKAGES = {           # package -> how to tell it is installed
    "gunicorn": ["-c", "import gunicorn"],
    "uwsgi": None,           # a binary only: bin/uwsgi
    "granian": ["-c", "import granian"],
    "bjoern": ["-c", "import bjoern"],
    "matplotlib": ["-c", "import matplotlib"],
}


def package_installed(pkg: str) -> bool:
    if pkg == "uwsgi":
        return (VENV / "bin" / "uwsgi").is_file()
    r = subprocess.run([str(VENV / "bin" / "python")] + PEER_PACKAGES[pkg],
                       capture_output=True, timeout=120)
    return r.returncode == 0


def ensure_libev() -> Optional[str]:
    """bjoern compiles against libev: install Debian's libev-dev when it is missing."""
    if Path("/usr/include/ev.h").is_file():
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "libev-dev is not installed (apt-get install libev-dev, as root)"
    log("  installing libev-dev (apt-get) for bjoern")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "libev-dev"], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "libev-dev"], capture_output=True,
                           text=True, timeout=600)
    if r.returncode != 0 or not Path("/usr/include/ev.h").is_file():
        return "apt-get install libev-dev failed: " + last_line(r.stderr or r.stdout)
    return None


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


def setup_peers(install: bool) -> dict:
    """Makes build/bench-venv and installs each peer on its own; returns {package: reason}
    for the ones that are not there."""
    missing = {}
    if not (VENV / "bin" / "python").is_file():
        if not install:
            return {p: "build/bench-venv does not exist (--no-install)" for p in PEER_PACKAGES}
        if not Path(SYSTEM_PYTHON).is_file():
            return {p: f"{SYSTEM_PYTHON} not found" for p in PEER_PACKAGES}
        log(f"  creating {VENV} from {SYSTEM_PYTHON}")
        r = subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(VENV)], capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0:
            return {p: "python3.11 -m venv failed: " + last_line(r.stderr) for p in PEER_PACKAGES}
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--upgrade", "pip"],
                       capture_output=True, timeout=600)
    for pkg in PEER_PACKAGES:
        if package_installed(pkg):
            continue
        if not install:
            missing[pkg] = "not installed in build/bench-venv (--no-install)"
            continue
        if pkg == "bjoern":
            why = ensure_libev()
            if why:
                missing[pkg] = why
                continue
        log(f"  pip install {pkg}" + (" (compiles with gcc, a minute or two)" if pkg == "uwsgi" else ""))
        try:
            r = subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", pkg],
                               capture_output=True, text=True, timeout=1200)
            ok = r.returncode == 0 and package_installed(pkg)
            why = last_line(r.stderr or r.stdout)
        except subprocess.TimeoutExpired:
            ok, why = False, "pip install timed out"
        if not ok:
            missing[pkg] = f"pip install {pkg} failed: {why}"
            log(f"  ! {missing[pkg]}")
    return missing


def peer_versions() -> dict:
    if not (VENV / "bin" / "python").is_file():
        return {}
    code = ("import importlib.metadata as m, json\n"
            "out = {}\n"
            "for p in ('gunicorn', 'uWSGI', 'granian', 'bjoern', 'matplotlib'):\n"
            "    try: out[p] = m.version(p)\n"
            "    except Exception: pass\n"
            "print(json.dumps(out))")
    r = subprocess.run([str(VENV / "bin" / "python"), "-c", code], capture_output=True,
                       text=True, timeout=60)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {}


# ---------------------------------------------------------------------------------------
# Machine and versions
# ---------------------------------------------------------------------------------------

def run_text(argv: list) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    os_name = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass

    def nginx_version(binary: Path) -> str:
        m = re.search(r"nginx/(\S+)", run_text([str(binary), "-v"]))
        return m.group(1) if m else "?"

    wrk = [re.sub(r"\s*\[.*$", "", ln) for ln in run_text(["wrk", "--version"]).splitlines()]
    git = run_text(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return {
        "cores": os.cpu_count(),
        "cpu": cpu or platform.processor() or "?",
        "memory_gib": round(mem_gib, 1),
        "os": os_name,
        "kernel": platform.release(),
        "nginx_debian": nginx_version(DEBIAN_NGINX) if DEBIAN_NGINX.is_file() else "missing",
        "nginx_vendored": nginx_version(VENDORED_NGINX) if VENDORED_NGINX.is_file() else "missing",
        "python": run_text([SYSTEM_PYTHON, "--version"]).replace("Python ", ""),
        "wrk": wrk[0] if wrk else "?",
        "git": git,
        "loadavg": loadavg(),
        "module_debian_mtime": mtime(DEBIAN_MODULE),
        "module_vendored_mtime": mtime(VENDORED_MODULE),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def mtime(path: Path) -> str:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    except OSError:
        return "missing"


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------

def wrk_start(port: int, wl: Workload, seconds: int, threads: int,
              connections: int) -> subprocess.Popen:
    env = dict(os.environ, BENCH_BODY_BYTES=str(wl.body_bytes))
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
            "--timeout", "10s", "--latency", "-s", str(WRK_SCRIPT),
            f"http://127.0.0.1:{port}{wl.path}"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wrk_run(port: int, wl: Workload, seconds: float, args, timeout_extra: float = 60) -> dict:
    proc = wrk_start(port, wl, seconds, args.threads, args.connections)
    return wrk_finish(proc, seconds, timeout_extra)


def wrk_finish(proc: subprocess.Popen, seconds: float, timeout_extra: float = 60) -> dict:
    """Waits for a wrk started by wrk_start (killed if that fails) and reads its counters."""
    try:
        out, _ = proc.communicate(timeout=seconds + timeout_extra)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    m = re.search(r"^BENCH_JSON (\{.*\})$", out, re.M)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {last_line(out)}")
    data = json.loads(m.group(1))
    data["raw"] = out
    return data


def wrk_figures(w: dict) -> dict:
    """A wrk result as the figures a measurement records."""
    secs = w["duration_us"] / 1e6
    return {
        "rps": w["requests"] / secs if secs else 0.0,
        "requests": w["requests"],
        "mb_per_s": w["bytes"] / secs / MIB if secs else 0.0,
        "p50_ms": w["p50_us"] / 1000, "p90_ms": w["p90_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000, "max_ms": w["lat_max_us"] / 1000,
        "non2xx": w["status"],
        "socket_errors": w["connect"] + w["read"] + w["write"] + w["timeout"],
        "errors_detail": {k: w[k] for k in ("connect", "read", "write", "timeout")},
    }


def not_applicable(wl: Workload, cfg: Config) -> Optional[str]:
    """Why the workload does not apply to the configuration (None: it does)."""
    if wl.background is None or cfg.group == "ceiling" or cfg.app_threads:
        return None
    if cfg.group == "ngx-wsgi":
        return "no Python threads: the application would sleep on the event loop"
    return "the application runs in processes of its own, not in nginx's workers"


def measure_mixed(server: Server, wl: Workload, cfg: Config, args) -> dict:
    """wrk on the nginx location alone, then the same while a second wrk keeps every Python
    thread of every worker asleep in the application (the ceiling: alone only). The second
    wrk has MIXED_PER_THREAD connections per thread, so the threads stay busy even when the
    connections split unevenly between the workers; even all on one worker wait within
    wsgi_queue (256) instead of getting 503. It starts 1 s before the measurement and its
    -d ends it 1 s after."""
    if args.warmup > 0:
        wrk_run(server.port, wl, args.warmup, args)
    sampler = RssSampler(server.procs)
    sampler.start()
    bg = None
    try:
        alone = wrk_figures(wrk_run(server.port, wl, args.duration, args))
        if not cfg.app_threads:
            return dict(alone, alone_rps=alone["rps"], alone_p50_ms=alone["p50_ms"],
                        alone_p99_ms=alone["p99_ms"], rss_peak_kb=sampler.stop())
        threads = WORKERS * cfg.app_threads
        conns = MIXED_PER_THREAD * threads
        bg = wrk_start(server.port, wl.background, args.duration + 2, 1, conns)
        time.sleep(1.0)
        loaded = wrk_figures(wrk_run(server.port, wl, args.duration, args))
        rss_kb = sampler.stop()
        bw = wrk_finish(bg, args.duration + 2)
        b = wrk_figures(bw)
    finally:
        sampler.stop()
        if bg is not None and bg.poll() is None:
            bg.kill()
            bg.wait()
    return dict(
        loaded,
        non2xx=loaded["non2xx"] + alone["non2xx"],
        socket_errors=loaded["socket_errors"] + alone["socket_errors"],
        errors_detail={k: v + alone["errors_detail"][k]
                       for k, v in loaded["errors_detail"].items()},
        alone_rps=alone["rps"], alone_p50_ms=alone["p50_ms"], alone_p99_ms=alone["p99_ms"],
        p99_ratio=loaded["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] else None,
        bg_rps=b["rps"], bg_connections=conns, bg_threads=threads,
        # Little's law: requests in the application at once = throughput × time in it,
        # counted from the first sleep's end on (nothing completes before)
        bg_busy=bw["requests"] * wl.background_sleep_s
        / max(bw["duration_us"] / 1e6 - wl.background_sleep_s, 1e-3),
        bg_errors=b["non2xx"] + b["socket_errors"],
        rss_peak_kb=rss_kb)


def check(port: int, wl: Workload, cfg: Config) -> Optional[str]:
    """One request before measuring: None when the answer is right, else what is wrong."""
    try:
        status, body = http_request(port, wl)
    except OSError as e:
        return f"request failed: {e}"
    if status != 200:
        return f"status {status}"
    expect = wl.expect_len
    if cfg.key == "nginx" and wl.ceiling_expect_len is not None:
        expect = wl.ceiling_expect_len
    if len(body) != expect:
        return f"body of {len(body)} bytes, expected {expect}"
    if wl.key == "echo" and cfg.key != "nginx" and body != b"b" * wl.body_bytes:
        return "echoed body differs from the one sent"
    return None


BAD_NGINX = re.compile(r"\[(alert|crit|emerg)\]|exited on signal")


def scan_logs(server: Server) -> list:
    """Notable lines of the server's logs: nginx [alert]/[crit]/[emerg]/[error], crashes, and
    Python tracebacks of the peers."""
    notes = []
    for path in server.nginx_logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        bad = [ln for ln in lines if BAD_NGINX.search(ln)]
        errs = [ln for ln in lines if "[error]" in ln]
        for ln in bad[:3]:
            notes.append(ln[:300])
        if errs:
            notes.append(f"{len(errs)} [error] line(s), first: {errs[0][:300]}")
    for p in server.procs:
        if p.name == "nginx":
            continue
        try:
            text = p.logfile.read_text(errors="replace")
        except OSError:
            continue
        n = text.count("Traceback (most recent call last)")
        if n:
            notes.append(f"{p.name}: {n} Python traceback(s) in {p.logfile.relative_to(ROOT)}")
    return notes


def measure_config(cfg: Config, workloads: list, rnd: int, args, results: list, notes: list) -> None:
    prefix = RUNDIR / f"r{rnd}-{cfg.key}"
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    server = None
    na = {wl.key: not_applicable(wl, cfg) for wl in workloads}
    for wl in workloads:
        if na[wl.key]:
            results.append({"round": rnd, "config": cfg.key, "workload": wl.key, "na": na[wl.key]})
    workloads = [wl for wl in workloads if not na[wl.key]]
    if not workloads:
        return
    t0 = time.monotonic()
    try:
        server = cfg.start(cfg, prefix)
        wait_ready(server.port, server.procs)
    except Exception as e:  # noqa: BLE001 - one config failing must not end the run
        msg = f"round {rnd}, {cfg.key}: did not start: {e}"
        log(f"  ! {msg}")
        notes.append(msg)
        for wl in workloads:
            results.append({"round": rnd, "config": cfg.key, "workload": wl.key, "error": str(e)})
        stop_all()          # only this configuration's processes are running
        if server:
            notes.extend(f"round {rnd}, {cfg.key}: {n}" for n in scan_logs(server))
        return
    log(f"  {cfg.key:<18} up in {time.monotonic() - t0:4.1f}s on :{server.port}")
    try:
        for wl in workloads:
            rec = {"round": rnd, "config": cfg.key, "workload": wl.key}
            problem = check(server.port, wl, cfg)
            if not problem and wl.background and cfg.app_threads:
                problem = check(server.port, wl.background, cfg)
            if problem:
                rec["error"] = f"check failed: {problem}"
                notes.append(f"round {rnd}, {cfg.key}, {wl.key}: {rec['error']}")
                log(f"    {wl.key:<7} ! {rec['error']}")
                results.append(rec)
                continue
            try:
                if wl.background:
                    fig = measure_mixed(server, wl, cfg, args)
                else:
                    if args.warmup > 0:
                        wrk_run(server.port, wl, args.warmup, args)
                    sampler = RssSampler(server.procs)
                    sampler.start()
                    try:
                        fig = wrk_figures(wrk_run(server.port, wl, args.duration, args))
                    finally:
                        fig["rss_peak_kb"] = sampler.stop()
            except Exception as e:  # noqa: BLE001
                rec["error"] = str(e)
                notes.append(f"round {rnd}, {cfg.key}, {wl.key}: {e}")
                log(f"    {wl.key:<7} ! {e}")
                results.append(rec)
                continue
            rec.update(fig)
            results.append(rec)
            errs = rec["non2xx"] + rec["socket_errors"]
            if "bg_rps" in rec:
                log(f"    {wl.key:<7} alone {rec['alone_rps']:>9.0f} req/s  p99 "
                    f"{rec['alone_p99_ms']:7.2f} ms")
            log(f"    {wl.key:<7} {rec['rps']:>9.0f} req/s  p50 {rec['p50_ms']:7.2f} ms  "
                f"p99 {rec['p99_ms']:7.2f} ms  rss {rec['rss_peak_kb'] / 1024:6.0f} MiB"
                + (f"  errors {errs}" if errs else ""))
            if "bg_rps" in rec:
                log(f"    {'':<7} (while {rec['bg_connections']} connections sleep: "
                    f"{rec['bg_rps']:.0f} req/s, ≈ {rec['bg_busy']:.1f} of {rec['bg_threads']} "
                    f"threads busy" + (f", errors {rec['bg_errors']}" if rec["bg_errors"] else "")
                    + f"; p99 × {fmt_ratio(rec['p99_ratio'])})")
        for p in server.procs:
            if not p.alive():
                msg = f"round {rnd}, {cfg.key}: {p.name} died during the run (log: {p.logfile})"
                notes.append(msg)
                log(f"  ! {msg}")
    finally:
        stop_all()          # the front nginx first (started last), then its backend
        for n in scan_logs(server):
            notes.append(f"round {rnd}, {cfg.key}: {n}")


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def summarize(results: list, configs: list, workloads: list, rounds: int) -> dict:
    """Per (workload, config): medians over the rounds and the ratios, each ratio taken
    against the reference of the same round."""
    by = {(r["round"], r["config"], r["workload"]): r for r in results}
    table = {}
    for wl in workloads:
        for cfg in configs:
            recs = [by.get((n, cfg.key, wl.key)) for n in range(1, rounds + 1)]
            ok = [r for r in recs if r and "rps" in r]
            row = {"rounds_ok": len(ok), "rounds": rounds,
                   "errors": [r["error"] for r in recs if r and "error" in r]}
            na = [r["na"] for r in recs if r and "na" in r]
            if na:
                row["na"] = na[0]
            if ok:
                row["rps"] = statistics.median(r["rps"] for r in ok)
                row["rps_rounds"] = [r["rps"] if r and "rps" in r else None for r in recs]
                row["p50_ms"] = statistics.median(r["p50_ms"] for r in ok)
                row["p99_ms"] = statistics.median(r["p99_ms"] for r in ok)
                row["non2xx"] = sum(r["non2xx"] for r in ok)
                row["socket_errors"] = sum(r["socket_errors"] for r in ok)
                row["rss_mib"] = max(r["rss_peak_kb"] for r in ok) / 1024
                row["mb_per_s"] = statistics.median(r["mb_per_s"] for r in ok)
                for k in ("alone_rps", "alone_p50_ms", "alone_p99_ms", "p99_ratio", "bg_rps",
                          "bg_busy", "bg_threads", "bg_connections"):      # mixed
                    vals = [r[k] for r in ok if r.get(k) is not None]
                    if vals:
                        row[k] = statistics.median(vals)
                if any("bg_errors" in r for r in ok):
                    row["bg_errors"] = sum(r.get("bg_errors", 0) for r in ok)
                if wl.background:       # p99 ÷ the ceiling's p99 (alone) of the same round
                    ratios = []
                    for r in ok:
                        base = by.get((r["round"], "nginx", wl.key))
                        if base and base.get("p99_ms"):
                            ratios.append(r["p99_ms"] / base["p99_ms"])
                    row["p99_x_nginx"] = statistics.median(ratios) if ratios else None
                for ref in REFERENCES:
                    ratios = []
                    for r in ok:
                        base = by.get((r["round"], ref, wl.key))
                        if base and base.get("rps"):
                            ratios.append(r["rps"] / base["rps"])
                    row[f"x_{ref}"] = statistics.median(ratios) if ratios else None
                    row[f"x_{ref}_rounds"] = ratios
            table[f"{wl.key}|{cfg.key}"] = row
    return table


def fmt_rps(v: Optional[float]) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def fmt_ratio(v: Optional[float]) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def mixed_overview(wl: Workload, configs: list, table: dict) -> str:
    """The overview's line of the mixed workload: p99 alone -> while the app sleeps."""
    parts = []
    for cfg in configs:
        row = table.get(f"{wl.key}|{cfg.key}", {})
        if "p99_ms" not in row:
            if not row.get("na"):
                parts.append(f"{cfg.label} " + ("failed" if row.get("errors") else "–"))
        elif "p99_ratio" in row:
            parts.append(f"{cfg.label} {fmt_ms(row['alone_p99_ms'])} -> "
                         f"{fmt_ms(row['p99_ms'])} ms (× {fmt_ratio(row['p99_ratio'])})")
        else:
            parts.append(f"{cfg.label} {fmt_ms(row['p99_ms'])} ms")
    return (f"{wl.key} (p99 of `GET {wl.path}`, `return 200`, alone -> while every app thread "
            f"sleeps): " + "; ".join(parts) + ".")


def mixed_section(wl: Workload, configs: list, table: dict) -> list:
    out = [f"## {wl.key}: {wl.title}", ""]
    bg = wl.background
    out.append(f"`GET {wl.path}`, `location = {wl.path} {{ return 200 \"ok\"; }}` in the "
               f"module's own server, measured alone, then again while a second wrk "
               f"(`-t1`, {MIXED_PER_THREAD} connections per Python thread, started 1 s before "
               f"and ending 1 s after) keeps `GET {bg.path}` "
               f"(`time.sleep({wl.background_sleep_s:g})`) on every Python thread of every "
               f"worker. Threads busy ≈ its req/s × {wl.background_sleep_s:g} s (Little's law, "
               f"from its first {wl.background_sleep_s:g} s on), out of workers × "
               f"`wsgi_threads`. p99 asleep ÷ alone: the median of the rounds' ratios; × nginx "
               f"p99: asleep p99 ÷ the ceiling's of the same round. Ceiling: {wl.ceiling_note}.")
    out.append("")
    out.append("| configuration | req/s alone | p50 ms | p99 ms | req/s asleep | p50 ms | p99 ms "
               "| p99 asleep ÷ alone | × nginx p99 | sleeping load | errors | peak RSS MiB |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    na = []
    for cfg in configs:
        row = table.get(f"{wl.key}|{cfg.key}", {})
        if row.get("na") and "rps" not in row:
            na.append(f"{cfg.label}: {row['na']}")
            continue
        if "rps" not in row:
            err = (row.get("errors") or ["not run"])[0]
            out.append(f"| {cfg.label} | failed: {err[:80].replace('|', '/')} "
                       "| | | | | | | | | | |")
            continue
        errs = row["non2xx"] + row["socket_errors"]
        err_txt = str(errs)
        if row["errors"]:
            err_txt += f" (+{len(row['errors'])} failed round)"
        alone = (f"{fmt_rps(row['alone_rps'])} | {fmt_ms(row['alone_p50_ms'])} "
                 f"| {fmt_ms(row['alone_p99_ms'])}")
        if "bg_rps" in row:
            asleep = (f"{fmt_rps(row['rps'])} | {fmt_ms(row['p50_ms'])} | {fmt_ms(row['p99_ms'])} "
                      f"| {fmt_ratio(row.get('p99_ratio'))} | {fmt_ratio(row.get('p99_x_nginx'))}")
            load = (f"{row['bg_connections']:.0f} conns, {fmt_rps(row['bg_rps'])} req/s, "
                    f"≈ {row['bg_busy']:.1f} of {row['bg_threads']:.0f} threads busy")
            if row.get("bg_errors"):
                load += f", {row['bg_errors']} errors"
        else:
            asleep, load = "– | – | – | – | –", "none (no application)"
        out.append(f"| {cfg.label} | {alone} | {asleep} | {load} | {err_txt} "
                   f"| {row['rss_mib']:.0f} |")
    out.append("")
    if na:
        out.append("n/a: " + "; ".join(na) + ".")
        out.append("")
    return out


def render_markdown(meta: dict, configs: list, workloads: list, table: dict) -> str:
    m = meta["machine"]
    a = meta["args"]
    out = []
    out.append(f"# ngx-wsgi benchmark ({a['mode']} run)")
    out.append("")
    out.append(f"- command: `{meta['command']}`")
    out.append(f"- date: {meta['date']} (took {meta['elapsed_s'] / 60:.1f} min)")
    out.append(f"- machine: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB; "
               f"{m['os']}, Linux {m['kernel']}")
    out.append(f"- nginx {m['nginx_debian']} (Debian, /usr/sbin/nginx) and "
               f"{m['nginx_vendored']} (vendored build); Python {m['python']} "
               f"(/usr/bin/python3.11, the one the module embeds and the peers run on)")
    pv = meta.get("peer_versions") or {}
    if pv:
        out.append("- peers: " + ", ".join(f"{k} {v}" for k, v in pv.items()))
    out.append(f"- module: git {m['git']}; build/debian .so of {m['module_debian_mtime']}, "
               f"build/vendored .so of {m['module_vendored_mtime']}")
    out.append(f"- load average (1, 5, 15 min) at the start: {m.get('loadavg_start', '?')}, "
               f"at the end: {m['loadavg']} (anything else running on the machine shows here)")
    out.append(f"- method: {m['wrk']}, `-t{a['threads']} -c{a['connections']} -d{a['duration']:g}s "
               f"--latency`, {a['warmup']:g} s warm-up before each measurement, rounds: {a['rounds']}; "
               f"each round starts every configuration afresh and runs all workloads on it, "
               f"configurations in the same order every round (A B C … A B C …). "
               f"Every server has {WORKERS} worker processes; wrk runs on the same cores.")
    out.append("- req/s, p50, p99: median over the rounds; errors: non-2xx responses + socket "
               "errors, summed over the rounds; peak RSS: the largest sum of VmRSS over the "
               "server's processes (nginx master + workers, or the peer's, and both for "
               "nginx -> peer), sampled every 0.2 s while measuring, largest over the rounds.")
    out.append("- × nginx: req/s divided by the ceiling configuration's in the same round "
               "(`return 200` or a static file); × uWSGI: divided by nginx -> uWSGI's in the "
               "same round; the median of the rounds' ratios.")
    if meta["skipped"]:
        out.append("- skipped: " + "; ".join(f"{k} ({v})" for k, v in meta["skipped"].items()))
    out.append("")

    out.append("## Overview: requests/s (× nginx -> uWSGI)")
    out.append("")
    plain = [w for w in workloads if not w.background]     # mixed: a line of its own below
    if plain:
        out.append("| configuration | " + " | ".join(w.key for w in plain) + " |")
        out.append("|---|" + "---:|" * len(plain))
        for cfg in configs:
            cells = []
            for wl in plain:
                row = table.get(f"{wl.key}|{cfg.key}", {})
                if "rps" not in row:
                    cells.append("failed" if row.get("errors") else "–")
                else:
                    cells.append(f"{fmt_rps(row['rps'])} ({fmt_ratio(row.get('x_uwsgi'))})")
            out.append(f"| {cfg.label} | " + " | ".join(cells) + " |")
        out.append("")
    for wl in workloads:
        if wl.background:
            out.append(mixed_overview(wl, configs, table))
            out.append("")

    for wl in workloads:
        if wl.background:
            out.extend(mixed_section(wl, configs, table))
            continue
        out.append(f"## {wl.key}: {wl.title}")
        out.append("")
        desc = f"`{'POST' if wl.body_bytes else 'GET'} {wl.path}`"
        if wl.ceiling_note:
            desc += f"; ceiling: {wl.ceiling_note}"
        out.append(desc)
        out.append("")
        out.append("| configuration | req/s | rounds | p50 ms | p99 ms | errors | peak RSS MiB "
                   "| × nginx | × uWSGI |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for cfg in configs:
            row = table.get(f"{wl.key}|{cfg.key}", {})
            if "rps" not in row:
                err = (row.get("errors") or ["not run"])[0]
                out.append(f"| {cfg.label} | failed: {err[:80].replace('|', '/')} | | | | | | | |")
                continue
            rounds = " / ".join(fmt_rps(v) for v in row["rps_rounds"])
            errs = row["non2xx"] + row["socket_errors"]
            err_txt = str(errs) if errs else "0"
            if row["errors"]:
                err_txt += f" (+{len(row['errors'])} failed round)"
            out.append(f"| {cfg.label} | {fmt_rps(row['rps'])} | {rounds} | {fmt_ms(row['p50_ms'])} "
                       f"| {fmt_ms(row['p99_ms'])} | {err_txt} | {row['rss_mib']:.0f} "
                       f"| {fmt_ratio(row.get('x_nginx'))} | {fmt_ratio(row.get('x_uwsgi'))} |")
        out.append("")

    out.append("## Configurations")
    out.append("")
    for cfg in configs:
        out.append(f"- **{cfg.label}** (`{cfg.key}`)" + (f": {cfg.note}" if cfg.note else ""))
    out.append("")
    if meta["notes"]:
        out.append("## Notes from the run")
        out.append("")
        seen = set()
        for n in meta["notes"]:
            if n not in seen:
                seen.add(n)
                out.append(f"- {n}")
        out.append("")
    if meta.get("chart"):
        out.append(f"![requests/s per workload]({meta['chart']})")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def parse_args(argv: list):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"configurations marked quick, workloads {','.join(QUICK_WORKLOADS)}, "
                         "2 s measurements (under 3 minutes)")
    ap.add_argument("--configs", help="comma-separated configuration keys (nginx and uwsgi "
                                      "are always added: the ratios need them)")
    ap.add_argument("--workloads", help="comma-separated workload keys")
    ap.add_argument("--rounds", type=int, help="rounds (default 2)")
    ap.add_argument("--duration", type=int, help="whole seconds of each measurement "
                                                 "(default 4, quick 2)")
    ap.add_argument("--warmup", type=int, help="whole seconds of warm-up before each "
                                               "measurement, 0 for none (default 1)")
    ap.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    ap.add_argument("--no-install", action="store_true",
                    help="do not create build/bench-venv or pip/apt install; missing peers "
                         "are skipped")
    ap.add_argument("--no-chart", action="store_true", help="no PNG")
    ap.add_argument("--out", default=str(RESULTS), help="results directory (bench/results)")
    ap.add_argument("--list", action="store_true", help="list configurations and workloads")
    args = ap.parse_args(argv)
    # A run with its own selection or timing is "custom": it gets files of its own, so it
    # never replaces the full or quick results.
    custom = any(v is not None for v in (args.configs, args.workloads, args.rounds,
                                         args.duration, args.warmup)) \
        or (args.connections, args.threads) != (64, 2)
    args.mode = "custom" if custom else ("quick" if args.quick else "full")
    args.rounds = args.rounds or 2
    args.duration = args.duration if args.duration is not None else (2 if args.quick else 4)
    args.warmup = args.warmup if args.warmup is not None else 1
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        ap.error("--rounds and --duration must be positive, --warmup not negative")
    return args


def pick(keys: Optional[str], default: list, by_key: dict, what: str) -> list:
    if not keys:
        return default
    out = []
    for k in keys.split(","):
        k = k.strip()
        if not k:
            continue
        if k not in by_key:
            sys.exit(f"unknown {what} {k!r}; known: {', '.join(by_key)}")
        out.append(by_key[k])
    return out


def install_signal_handlers() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    # Also when started in the background by a shell without job control, which leaves
    # SIGINT ignored: Ctrl-C or kill -INT must still stop the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list) -> int:
    args = parse_args(argv)
    if args.list:
        log("configurations (* = in --quick):")
        for c in CONFIGS:
            log(f"  {'*' if c.in_quick else ' '} {c.key:<18} {c.label}")
        log("workloads (* = in --quick):")
        for w in WORKLOADS:
            log(f"  {'*' if w.key in QUICK_WORKLOADS else ' '} {w.key:<8} {w.title}")
        return 0
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    install_signal_handlers()
    started = time.time()
    load_at_start = loadavg()
    mono0 = time.monotonic()

    default_cfgs = [c for c in CONFIGS if c.in_quick] if args.quick else CONFIGS
    default_wls = [WORKLOAD_BY_KEY[k] for k in QUICK_WORKLOADS] if args.quick else WORKLOADS
    configs = pick(args.configs, default_cfgs, CONFIG_BY_KEY, "configuration")
    for ref in reversed(REFERENCES):
        if CONFIG_BY_KEY[ref] not in configs:
            configs.insert(0 if ref == "nginx" else len(configs), CONFIG_BY_KEY[ref])
    configs = [c for c in CONFIGS if c in configs]       # keep the canonical order
    workloads = pick(args.workloads, default_wls, WORKLOAD_BY_KEY, "workload")

    log("setup")
    make_data()
    missing = setup_peers(install=not args.no_install)
    skipped = {}
    runnable = []
    for cfg in configs:
        why = [f"{f} not found" + (" (make build)" if "build" in str(f) else "")
               for f in cfg.files if not Path(f).is_file()]
        why += [missing[n] for n in cfg.needs if n in missing]
        if why:
            skipped[cfg.key] = "; ".join(why)
            log(f"  skip {cfg.key}: {skipped[cfg.key]}")
        else:
            runnable.append(cfg)
    if "matplotlib" in missing and not args.no_chart:
        skipped["chart"] = missing["matplotlib"]

    def cost(wl: Workload, cfg: Config) -> float:
        if not_applicable(wl, cfg):
            return 0.0
        if wl.background and cfg.app_threads:     # alone, then 1 s + asleep + 1 s
            return args.warmup + 2 * args.duration + 2.8
        return args.warmup + args.duration + 0.4
    est = args.rounds * sum(sum(cost(wl, cfg) for wl in workloads) + 2.0 for cfg in runnable
                            if any(not not_applicable(wl, cfg) for wl in workloads))
    log(f"{len(runnable)} configurations x {len(workloads)} workloads x {args.rounds} rounds, "
        f"about {est / 60:.1f} min")

    results: list = []
    notes: list = []
    try:
        for rnd in range(1, args.rounds + 1):
            log(f"round {rnd}/{args.rounds}")
            for cfg in runnable:
                measure_config(cfg, workloads, rnd, args, results, notes)
    except KeyboardInterrupt:
        log("\ninterrupted: stopping the servers")
        stop_all()
        return 130
    finally:
        stop_all()

    elapsed = time.monotonic() - mono0
    meta = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name,
                                                    "bench/run.py"] + argv),
        "date": dt.datetime.fromtimestamp(started).astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "elapsed_s": elapsed,
        "machine": dict(machine_info(), loadavg_start=load_at_start),
        "peer_versions": peer_versions(),
        "args": {"mode": args.mode, "quick": args.quick, "rounds": args.rounds, "duration": args.duration,
                 "warmup": args.warmup, "connections": args.connections,
                 "threads": args.threads},
        "skipped": skipped,
        "notes": notes,
    }
    table = summarize(results, runnable, workloads, args.rounds)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = {"full": "latest", "quick": "latest-quick", "custom": "latest-custom"}[args.mode]
    stamp = dt.datetime.fromtimestamp(started).strftime("%Y%m%d-%H%M")
    dated = f"{stamp}-{args.mode}"
    payload = {"meta": meta, "configs": [{"key": c.key, "label": c.label, "group": c.group}
                                         for c in runnable],
               "workloads": [{"key": w.key, "title": w.title, "ceiling_note": w.ceiling_note,
                              "ceiling_exact": w.ceiling_expect_len is None}
                             for w in workloads],
               "table": table, "results": results}
    for r in results:
        r.pop("raw", None)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))

    chart_ok = False
    if not args.no_chart and "chart" not in skipped:
        r = subprocess.run([str(VENV / "bin" / "python"), str(BENCH / "chart.py"),
                            str(out / f"{stem}.json"), str(out / f"{stem}.png")],
                           capture_output=True, text=True, timeout=300)
        chart_ok = r.returncode == 0
        if not chart_ok:
            notes.append("chart failed: " + last_line(r.stderr))
    meta["chart"] = f"{stem}.png" if chart_ok else None
    md = render_markdown(meta, runnable, workloads, table)
    (out / f"{stem}.md").write_text(md + "\n")
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    shutil.copyfile(out / f"{stem}.json", out / f"{dated}.json")
    if chart_ok:
        shutil.copyfile(out / f"{stem}.png", out / f"{dated}.png")
    (out / f"{dated}.md").write_text(md.replace(f"]({stem}.png)", f"]({dated}.png)") + "\n")
    log("")
    log(md)
    log(f"written: {out / (stem + '.md')}, {stem}.json" + (f", {stem}.png" if chart_ok else "")
        + f" and {dated}.*  ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    finally:
        stop_all()
