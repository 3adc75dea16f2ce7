"""0.6.0's wsgi_websocket.py of the two-server setup: websockets alone, on ``uwsgi --http-socket``.

It patches only redis-py's socket module with gevent's, and never calls ``django.setup()``.
"""

import os

import gevent.socket
import redis.connection

redis.connection.socket = gevent.socket
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")

from ws4redis.uwsgi_runserver import uWSGIWebsocketServer  # noqa: E402

application = uWSGIWebsocketServer()
