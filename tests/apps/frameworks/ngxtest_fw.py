"""What the framework apps of tests/test_frameworks.py share: the streamed pieces and the
text the form handler echoes (each app parses the form with its framework's own API)."""

import time

PIECES = [b"piece-1 of 3\n", b"piece-2 of 3\n", b"piece-3 of 3\n"]
PAUSE = 0.2  # seconds between the pieces, so that each one is sent on its own


def pieces(framework):
    """The streamed body: three pieces with a pause before the second and the third."""
    for number, piece in enumerate(PIECES):
        if number:
            time.sleep(PAUSE)
        yield piece.replace(b" of 3", f" of 3 from {framework}".encode())


def echo(framework, name, colors):
    return f"{framework} form: name={name} colors={','.join(colors)}\n"


def page(framework, version, script_name, path):
    return (f"<!doctype html><title>{framework}</title>"
            f"<h1>Hello from {framework} {version}</h1>"
            f"<p>script_name={script_name} path={path}</p>\n")


def boom(framework):
    raise RuntimeError(f"ngxtest-{framework}-boom: this handler fails on purpose")
