"""Real applications with their real clients: a git server and a Mercurial server.

* git: dulwich's smart-HTTP WSGI app (tests/apps/gitserver.py, every bare
  repository under STATE_DIR/git) driven by the ``git`` command: clone, commit a
  5 MB file of random bytes and some small files, push (git-receive-pack),
  clone again and compare. git sends a push whose pack is larger than
  ``http.postBuffer`` (default 1 MiB) with ``Transfer-Encoding: chunked`` and a
  smaller one with ``Content-Length``; both are tested, and git's own HTTP trace
  (GIT_TRACE_CURL) shows which one it used.
* Mercurial: hgweb (tests/apps/hgserver.py, the repository STATE_DIR/hg/repo)
  driven by Debian's ``hg``: clone, commit (a 1.5 MB file among others), push,
  clone again and compare.

Both apps come from the test virtualenv (``wsgi_python_home``) and run with the
Python thread pool (default) and inline on the event loop (``wsgi_threads 0``),
with two workers, so a clone may well be answered by another process than the
push before it. The clients run with an empty HOME, no system configuration
(GIT_CONFIG_NOSYSTEM, HGRCPATH=""), no proxy variables, and the author given on
the command line, so nothing depends on the machine.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest


VCS_CONF = """
    wsgi_python_home @VENV@;
    wsgi_python_path @PYLIB@;
    {threads}
    server {{
        listen 127.0.0.1:@PORT@;
        client_max_body_size 0;
        location / {{
            wsgi_app @APPS@/{app};
        }}
    }}
"""

MODES = {"threads": "", "inline": "wsgi_threads 0;"}

GIT_IDENTITY = ["-c", "user.name=ngx-wsgi test", "-c", "user.email=test@example.invalid",
                "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
HG_IDENTITY = ["--config", "ui.username=ngx-wsgi test <test@example.invalid>"]

BIG = 5 * 1024 * 1024
HG_BIG = 1536 * 1024
COMMAND_TIMEOUT = 180


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def need(flavor, module, command):
    """Skip unless ``module`` imports in the flavour's test virtualenv and ``command`` is on
    PATH."""
    check = subprocess.run([str(flavor.venv_python), "-c", f"import {module}"],
                           capture_output=True, timeout=60)
    if check.returncode != 0:
        pytest.skip(f"{module} is not installed in {flavor.venv} (tests/requirements.txt)")
    if shutil.which(command) is None:
        pytest.skip(f"no {command} command")


def client_env(home: Path, **extra) -> dict:
    """A minimal environment for git/hg: own HOME, no system config, no proxies."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "HGRCPATH": "",
        "HGPLAIN": "1",
        "HGENCODING": "utf-8",
    }
    env.update(extra)
    return env


def run(cmd, cwd, env, srv=None, timeout=COMMAND_TIMEOUT) -> str:
    """Run a client command; on failure the assertion shows its output and the
    end of the server's error.log."""
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{cmd} did not finish within {timeout}s; output so far:\n"
                             f"{exc.stdout}\n{exc.stderr}" + server_log(srv)) from None
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed (rc={proc.returncode}):\n--- stdout ---\n"
                             f"{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
                             + server_log(srv))
    return proc.stdout


def server_log(srv) -> str:
    return f"\n--- error.log (tail) ---\n{srv.log_tail(60)}" if srv is not None else ""


def tree(root: Path, skip: str) -> dict:
    """{relative path: bytes} of every file under ``root`` outside the ``skip`` directory."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == skip or not path.is_file():
            continue
        files[rel.as_posix()] = path.read_bytes()
    return files


def assert_same_tree(expected: dict, actual: dict):
    assert sorted(actual) == sorted(expected), \
        f"files differ: missing {sorted(set(expected) - set(actual))}, " \
        f"extra {sorted(set(actual) - set(expected))}"
    for name, data in expected.items():
        got = actual[name]
        assert got == data, (f"{name}: {len(got)} bytes, expected {len(data)}; "
                             f"first difference at byte "
                             f"{next((i for i, (a, b) in enumerate(zip(got, data)) if a != b), min(len(got), len(data)))}")


def write_files(root: Path, files: dict):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def small_files(tag: str) -> dict:
    """A handful of small text and binary files, some in subdirectories."""
    return {
        f"notes-{tag}.txt": f"notes for {tag}\n".encode() * 40,
        f"src/{tag}/module.py": f"NAME = {tag!r}\n\n\ndef hello():\n    return NAME\n".encode(),
        f"src/{tag}/data.bin": bytes(range(256)) * 16,
        f"docs/{tag}/empty.txt": b"",
        f"docs/{tag}/unicode-\u00e9t\u00e9.txt": "caf\u00e9 \u2013 na\u00efve\n".encode(),
        "README": f"a repository served by ngx-wsgi, last change: {tag}\n".encode(),
    }


# --------------------------------------------------------------------------
# git + dulwich
# --------------------------------------------------------------------------

@pytest.fixture(scope="module", params=list(MODES))
def git_server(request, nginx_module_servers, flavor):
    """nginx serving tests/apps/gitserver.py (dulwich) for STATE_DIR/git/*.git."""
    need(flavor, "dulwich", "git")
    mode = request.param
    srv = nginx_module_servers(VCS_CONF.format(threads=MODES[mode], app="gitserver.py"),
                               name=f"git-{mode}", start=False)
    (srv.state_dir / "git").mkdir()
    return srv.start()


def git(*args):
    return ["git", *GIT_IDENTITY, *args]


def new_git_repo(srv, tmp_path, name) -> tuple:
    """A bare repository STATE_DIR/git/<name>.git seeded with one commit (pushed
    locally, not over HTTP); returns (clone URL, bare path, env)."""
    env = client_env(tmp_path / "home")
    bare = srv.state_dir / "git" / f"{name}.git"
    run(git("init", "--bare", "-b", "main", bare), tmp_path, env)
    seed = tmp_path / "seed"
    run(git("init", "-b", "main", seed), tmp_path, env)
    (seed / "README").write_bytes(b"seed commit\n")
    run(git("add", "-A"), seed, env)
    run(git("commit", "-q", "-m", "seed"), seed, env)
    run(git("push", "-q", bare, "main"), seed, env)
    return srv.url(f"/{name}.git"), bare, env


def git_head(repo: Path, env, ref="HEAD") -> str:
    return run(git("rev-parse", ref), repo, env).strip()


def git_log(repo: Path, env) -> list:
    return run(git("log", "--format=%H %s"), repo, env).split("\n")


def git_push(srv, repo: Path, env, post_buffer=None, trace: Path = None) -> str:
    """``git push origin main`` (optionally with ``http.postBuffer``); returns the
    curl trace (headers only) of the push."""
    trace = trace or repo.parent / "push-trace.txt"
    options = ["-c", f"http.postBuffer={post_buffer}"] if post_buffer else []
    push_env = dict(env, GIT_TRACE_CURL=str(trace), GIT_TRACE_CURL_NO_DATA="1")
    run(git(*options, "push", "origin", "main"), repo, push_env, srv)
    return trace.read_text(errors="replace")


def receive_pack_request_head(trace: str) -> str:
    """The request headers of the POST .../git-receive-pack in a GIT_TRACE_CURL trace."""
    heads = []
    for line in trace.splitlines():
        if "=> Send header:" in line:
            heads.append(line.split("=> Send header:", 1)[1].strip())
    text = "\n".join(heads)
    posts = [block for block in text.split("POST ")[1:] if "git-receive-pack" in block.split("\n")[0]]
    assert posts, f"no POST to git-receive-pack in the trace:\n{trace[-3000:]}"
    # the last one carries the pack (an earlier one may be a small probe)
    return "POST " + posts[-1]


def test_git_clone(git_server, tmp_path):
    """``git clone`` over smart HTTP: the clone has the seed commit and file."""
    url, bare, env = new_git_repo(git_server, tmp_path, "clone")
    clone = tmp_path / "clone"
    run(git("clone", "-q", url, clone), tmp_path, env, git_server)
    assert (clone / "README").read_bytes() == b"seed commit\n"
    assert git_head(clone, env) == git_head(bare, env, "main")
    assert git_log(clone, env) == git_log(bare, env)


@pytest.mark.parametrize("post_buffer, size, chunked", [
    (None, BIG, True),            # default postBuffer 1 MiB < 5 MB pack: chunked
    (16 * 1024, 300 * 1024, True),  # a small push, still over a 16 KiB postBuffer: chunked
    (64 * 1024 * 1024, BIG, False),  # the 5 MB pack fits in the buffer: Content-Length
], ids=["default-5MB-chunked", "postbuffer16k-chunked", "postbuffer64m-content-length"])
def test_git_push_and_clone_again(git_server, tmp_path, post_buffer, size, chunked):
    """Clone, commit a file of ``size`` random bytes plus several small files,
    push (receive-pack); the server's branch is the pushed commit and its
    repository is sound (``git fsck``); a fresh clone has exactly the same
    files, bytes and history. A second, small push on top arrives too."""
    srv = git_server
    url, bare, env = new_git_repo(srv, tmp_path, f"push-{size}-{post_buffer}")
    work = tmp_path / "work"
    run(git("clone", "-q", url, work), tmp_path, env, srv)

    files = small_files("first")
    files["blobs/random.bin"] = os.urandom(size)
    write_files(work, files)
    (work / "src" / "first" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (work / "src" / "first" / "run.sh").chmod(0o755)
    run(git("add", "-A"), work, env)
    run(git("commit", "-q", "-m", "big commit"), work, env)

    trace = git_push(srv, work, env, post_buffer)
    head = receive_pack_request_head(trace)
    if chunked:
        assert "Transfer-Encoding: chunked" in head, f"git did not send the push chunked:\n{head}"
    else:
        assert "Content-Length:" in head and "chunked" not in head, \
            f"git did not send the push with Content-Length:\n{head}"

    assert git_head(bare, env, "main") == git_head(work, env), "the push did not update main"
    run(git("fsck", "--full", "--strict"), bare, env)

    again = tmp_path / "again"
    run(git("clone", "-q", url, again), tmp_path, env, srv)
    assert git_head(again, env) == git_head(work, env)
    assert git_log(again, env) == git_log(work, env)
    assert_same_tree(tree(work, ".git"), tree(again, ".git"))
    assert os.access(again / "src" / "first" / "run.sh", os.X_OK), "the executable bit was lost"

    # an incremental push from the second clone, fetched into the first one
    write_files(again, small_files("second"))
    run(git("add", "-A"), again, env)
    run(git("commit", "-q", "-m", "small commit"), again, env)
    git_push(srv, again, env, post_buffer, trace=tmp_path / "second-push.txt")
    run(git("pull", "-q", "--ff-only", "origin", "main"), work, env, srv)
    assert git_head(work, env) == git_head(again, env) == git_head(bare, env, "main")
    assert_same_tree(tree(again, ".git"), tree(work, ".git"))


# --------------------------------------------------------------------------
# Mercurial hgweb
# --------------------------------------------------------------------------

HG_SERVER_RC = b"[web]\npush_ssl = False\nallow_push = *\n"


@pytest.fixture(scope="module", params=list(MODES))
def hg_server(request, nginx_module_servers, tmp_path_factory, flavor):
    """nginx serving tests/apps/hgserver.py (hgweb) for STATE_DIR/hg/repo, which
    is created (with one seed commit) before nginx starts."""
    need(flavor, "mercurial.hgweb", "hg")
    mode = request.param
    srv = nginx_module_servers(VCS_CONF.format(threads=MODES[mode], app="hgserver.py"),
                               name=f"hg-{mode}", start=False)
    scratch = tmp_path_factory.mktemp(f"hg-seed-{mode}")
    env = client_env(scratch / "home")
    repo = srv.state_dir / "hg" / "repo"
    repo.parent.mkdir()
    run(["hg", "init", repo], scratch, env)
    (repo / ".hg" / "hgrc").write_bytes(HG_SERVER_RC)
    seed = scratch / "seed"
    run(["hg", "init", seed], scratch, env)
    (seed / "README").write_bytes(b"seed commit\n")
    run(["hg", *HG_IDENTITY, "commit", "-A", "-q", "-m", "seed"], seed, env)
    run(["hg", "push", "-q", repo], seed, env)
    srv.hg_repo = repo
    return srv.start()


def hg(*args):
    return ["hg", *HG_IDENTITY, *args]


def hg_log(repo: Path, env) -> list:
    return run(hg("log", "-T", "{node} {desc}\n"), repo, env).splitlines()


def hg_tip(repo: Path, env) -> str:
    return run(hg("log", "-r", "tip", "-T", "{node}"), repo, env).strip()


def test_hg_clone_push_clone(hg_server, tmp_path):
    """``hg clone`` over HTTP; commit a 1.5 MB random file and small files;
    ``hg push``; the server repository has the new tip and verifies; a fresh
    clone has exactly the same files, bytes and history."""
    srv = hg_server
    env = client_env(tmp_path / "home")
    url = srv.url("/")
    work = tmp_path / "work"
    run(hg("clone", "-q", url, work), tmp_path, env, srv)
    assert (work / "README").is_file(), "the clone has no README"
    assert hg_log(work, env) == hg_log(srv.hg_repo, env)

    tag = tmp_path.name[-12:]
    files = small_files(f"hg-{tag}")
    files[f"blobs/random-{tag}.bin"] = os.urandom(HG_BIG)
    write_files(work, files)
    run(hg("commit", "-A", "-q", "-m", f"commit {tag}"), work, env)
    run(hg("push", "-q", url), work, env, srv)
    assert hg_tip(srv.hg_repo, env) == hg_tip(work, env), "the push did not arrive"
    run(hg("verify", "-q"), srv.hg_repo, env)

    again = tmp_path / "again"
    run(hg("clone", "-q", url, again), tmp_path, env, srv)
    assert hg_tip(again, env) == hg_tip(work, env)
    assert hg_log(again, env) == hg_log(work, env)
    assert_same_tree(tree(work, ".hg"), tree(again, ".hg"))

    # an incremental push from the second clone, pulled into the first one
    write_files(again, small_files(f"hg-{tag}-second"))
    run(hg("commit", "-A", "-q", "-m", f"second {tag}"), again, env)
    run(hg("push", "-q", url), again, env, srv)
    run(hg("pull", "-q", "-u", url), work, env, srv)
    assert hg_tip(work, env) == hg_tip(again, env) == hg_tip(srv.hg_repo, env)
    assert_same_tree(tree(again, ".hg"), tree(work, ".hg"))
