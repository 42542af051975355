"""dulwich's smart-HTTP git server as a WSGI app (tests/test_vcs.py).

Serves every repository under STATE_DIR/git (the generated ``ngxtest_settings``
module names STATE_DIR): ``http://host/<name>.git`` is STATE_DIR/git/<name>.git.
A ``dulwich.server.FileSystemBackend`` rooted there opens the repository afresh
for each request, so the workers (separate processes) always see each other's
pushes. (It joins the URL path to its root, so the leading "/" is taken off
first: an absolute path would escape the root and be refused.)
``make_wsgi_chain`` enables git-upload-pack (clone, fetch) and git-receive-pack
(push) and adds dulwich's gzip and input-length middleware.

Needs dulwich in the virtualenv given with ``wsgi_python_home``.
"""

import os

from dulwich.server import FileSystemBackend
from dulwich.web import make_wsgi_chain

import ngxtest_settings  # generated per server by the test harness

GIT_ROOT = os.path.join(ngxtest_settings.STATE_DIR, "git")

class StateDirBackend(FileSystemBackend):
    def open_repository(self, path):
        path = os.fsdecode(path).lstrip("/")
        return super().open_repository(path)


application = make_wsgi_chain(StateDirBackend(GIT_ROOT))
