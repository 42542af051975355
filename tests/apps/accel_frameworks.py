"""Flask's and Django's protected-download recipes, unchanged: the view answers with
X-Accel-Redirect and nginx serves the file from an internal location.

Flask at /flask/<name>, Django at /django/<name> (both mounted with wsgi_script_name).
"""

import django
from django.conf import settings

settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="x",
                   MIDDLEWARE=[], INSTALLED_APPS=[])
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from flask import Flask, Response  # noqa: E402


def django_download(request, name):
    response = HttpResponse()
    response["Content-Type"] = "application/octet-stream"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Accel-Redirect"] = f"/internal/{name}"
    return response


urlpatterns = [path("<str:name>", django_download)]
django_app = get_wsgi_application()

flask_app = Flask(__name__)


@flask_app.route("/<name>")
def flask_download(name):
    response = Response()
    response.headers["X-Accel-Redirect"] = f"/internal/{name}"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
