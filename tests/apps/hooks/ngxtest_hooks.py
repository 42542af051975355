"""Worker hooks for ``wsgi_worker_start`` / ``wsgi_worker_stop`` (tests/test_workers.py).

Imported from sys.path (``wsgi_python_path .../tests/apps/hooks``). Everything goes to
files in the server's STATE_DIR (from the generated ``ngxtest_settings`` module):

* ``start``       writes ``started.<pid>`` with the pid and the names of the script
                  apps already imported (``_ngx_wsgi_*`` modules in sys.modules)
* ``stop``        appends ``stopped <pid>`` to ``hooks.log``
* ``fail_start`` / ``fail_stop`` raise RuntimeError (the tests look for the traceback)

``hookapp.py`` (the app the hook tests serve) appends ``atexit <pid>`` to the same
``hooks.log`` from an atexit handler, so the tests can see that the stop hook ran before
the interpreter was finalized.
"""

import os
import sys

import ngxtest_settings  # generated per server by the test harness


def _path(name):
    return os.path.join(ngxtest_settings.STATE_DIR, name)


def start():
    apps = sorted(name for name in sys.modules if name.startswith("_ngx_wsgi_"))
    with open(_path(f"started.{os.getpid()}"), "w") as f:
        f.write(f"{os.getpid()}\n{' '.join(apps)}\n")


def stop():
    with open(_path("hooks.log"), "a") as f:
        f.write(f"stopped {os.getpid()}\n")


def fail_start():
    raise RuntimeError("start hook fails on purpose")


def fail_stop():
    raise RuntimeError("stop hook fails on purpose")
