"""A small Flask app: an upload form and a streamed response.

Served with ``wsgi_python_home`` pointing at the test virtualenv (which has
Flask) and ``wsgi_app .../flaskapp/app.py:app``.
"""

import hashlib
import time

from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)

FORM = """<!doctype html>
<title>upload</title>
<form method="post" action="upload" enctype="multipart/form-data">
  <input type="text" name="note">
  <input type="file" name="upload">
  <button>send</button>
</form>
"""


@app.get("/")
def form():
    return FORM


@app.post("/upload")
def upload():
    uploaded = request.files["upload"]
    data = uploaded.read()
    return (f"filename={uploaded.filename} size={len(data)} "
            f"sha256={hashlib.sha256(data).hexdigest()} note={request.form.get('note', '')}\n")


@app.get("/stream")
def stream():
    who = request.args.get("who", "nobody")

    @stream_with_context
    def generate():
        yield "piece-1\n"
        time.sleep(1.5)  # the behaviour under test: a pause between two streamed pieces
        # request is still usable here thanks to stream_with_context
        yield f"piece-2 for {request.args.get('who', who)}\n"

    return Response(generate(), mimetype="text/plain")
