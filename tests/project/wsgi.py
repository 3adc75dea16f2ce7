"""The single-server wsgi.py of django-websocket-redis 0.6.0's documentation, as its users have it.

    uwsgi --virtualenv /path/to/virtualenv --http :80 --gevent 100 --http-websockets --module wsgi
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")

from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

from ws4redis.uwsgi_runserver import uWSGIWebsocketServer  # noqa: E402

_django_app = get_wsgi_application()
_websocket_app = uWSGIWebsocketServer()


def application(environ, start_response):
    if environ.get("PATH_INFO").startswith(settings.WEBSOCKET_URL):
        return _websocket_app(environ, start_response)
    return _django_app(environ, start_response)
