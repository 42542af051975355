"""bjoern with N worker processes: bjoern has no worker option of its own, so this
binds the socket once and forks N children that each run bjoern's event loop on it.

    python bjoern_server.py HOST PORT WORKERS MODULE:CALLABLE   (run from the app's directory)

SIGTERM or SIGINT to the parent stops the children it forked and exits.
"""

import importlib
import os
import signal
import sys
import time

import bjoern


def main():
    host, port, workers, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    module_name, _, callable_name = target.partition(":")
    sys.path.insert(0, os.getcwd())
    app = getattr(importlib.import_module(module_name), callable_name or "application")

    bjoern.listen(app, host, port)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            bjoern.run()
            os._exit(0)
        children.append(pid)

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and children:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            children.remove(pid)
            print(f"bjoern worker {pid} exited", file=sys.stderr, flush=True)
        time.sleep(0.2)
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            children.remove(pid)
        else:
            time.sleep(0.05)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    main()
