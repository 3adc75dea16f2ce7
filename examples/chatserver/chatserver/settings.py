"""Settings of the ws4redis example project (development only: DEBUG, a public SECRET_KEY).

Redis is found through ``WS4REDIS_EXAMPLE_REDIS`` (see redis_address.py);
``examples/run.py`` sets it to the redis-server it uses.
"""

import os
from pathlib import Path

from chatserver.redis_address import CHAT_PREFIX, SESSION_PREFIX, redis_address_from_env

BASE_DIR = Path(__file__).resolve().parent.parent
REDIS = redis_address_from_env()

SECRET_KEY = os.environ.get("CHATSERVER_SECRET_KEY", "ws4redis-example-not-a-secret")
DEBUG = os.environ.get("CHATSERVER_DEBUG", "1") != "0"
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("CHATSERVER_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if host.strip()
]

INSTALLED_APPS = [
    "chatserver",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ws4redis",
]

# The websocket loop authenticates a connection with the session cookie, so the
# session and authentication middleware must be present for subscribe-user,
# subscribe-group and subscribe-session to know who is connecting.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatserver.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.static",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # WEBSOCKET_URI and WS4REDIS_HEARTBEAT for the templates
                "ws4redis.context_processors.default",
            ],
        },
    },
]

# `manage.py runserver` serves the pages and the websockets on one port through
# this application; under uWSGI or gevent the websocket server runs on its own.
WSGI_APPLICATION = "ws4redis.django_runserver.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CHATSERVER_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS.url,
        "KEY_PREFIX": SESSION_PREFIX,
    }
}

# Sessions live in Redis, not in the database. The websocket loop loads the
# session on every connect to learn the user and the groups; with database
# sessions that is a blocking SQL query from inside the websocket server, which
# under gevent stalls every other connection of the process (or needs a
# gevent-aware driver and a connection per greenlet) and under runserver ties
# up a database connection per open websocket. A Redis-backed cache is
# non-blocking under gevent and already a dependency.
SESSION_ENGINE = "django.contrib.sessions.backends.cache"
SESSION_CACHE_ALIAS = "default"

AUTH_PASSWORD_VALIDATORS = []
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "userchat"
LOGOUT_REDIRECT_URL = "chat"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"

# ws4redis
WEBSOCKET_URL = "/ws/"
WS4REDIS_CONNECTION = {"host": REDIS.host, "port": REDIS.port, "db": REDIS.db}
# Keep the last message of every channel for an hour: a page opened later shows it.
WS4REDIS_EXPIRE = 3600
WS4REDIS_PREFIX = CHAT_PREFIX
WS4REDIS_HEARTBEAT = "--heartbeat--"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "ws4redis": {"handlers": ["console"], "level": os.environ.get("CHATSERVER_LOG_LEVEL", "INFO")},
    },
}
