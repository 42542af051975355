"""Mercurial's hgweb as a WSGI app (tests/test_vcs.py).

Serves the single repository STATE_DIR/hg/repo (the generated
``ngxtest_settings`` module names STATE_DIR), which the test creates before
nginx starts; its .hg/hgrc allows pushing over plain HTTP
(``[web] push_ssl = False``, ``allow_push = *``).

HGRCPATH is emptied before Mercurial is imported so that only the repository's
own .hg/hgrc applies, not /etc/mercurial or the worker's HOME.

Needs mercurial in the virtualenv given with ``wsgi_python_home``.
"""

import os

os.environ["HGRCPATH"] = ""
os.environ["HGENCODING"] = "utf-8"

from mercurial.hgweb import hgweb  # noqa: E402

import ngxtest_settings  # noqa: E402  (generated per server by the test harness)

REPO = os.path.join(ngxtest_settings.STATE_DIR, "hg", "repo")

application = hgweb(os.fsencode(REPO))
