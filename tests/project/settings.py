"""Settings of the test project.

The Redis URL comes from the environment variable WS4REDIS_TEST_REDIS_URL,
which ``tests/conftest.py`` sets when it starts the suite's own redis-server
and which server subprocesses inherit. pytest-django imports this module
before conftest runs, so conftest also re-points the two Redis settings
through ``redis_settings()``. Without the variable, the settings point at a
port where nothing listens, so a forgotten setup fails loudly instead of
touching a Redis that belongs to someone else.

The SQLite file lives in a temporary directory shared with subprocesses
through WS4REDIS_TEST_DB_DIR (created here when unset, removed by conftest).
"""

import os
import tempfile
from pathlib import Path

NO_REDIS_URL = "redis://127.0.0.1:1/0"


def redis_settings(url: str) -> dict:
    """CACHES and WS4REDIS_CONNECTION for the Redis at ``url``."""
    return {
        "CACHES": {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": url,
            }
        },
        "WS4REDIS_CONNECTION": {"url": url},
    }


_redis = redis_settings(os.environ.get("WS4REDIS_TEST_REDIS_URL", NO_REDIS_URL))
CACHES = _redis["CACHES"]
WS4REDIS_CONNECTION = _redis["WS4REDIS_CONNECTION"]

# Whether this process made the directory (and conftest may delete it at the end).
DB_DIR_CREATED = "WS4REDIS_TEST_DB_DIR" not in os.environ
DB_DIR = Path(os.environ.setdefault("WS4REDIS_TEST_DB_DIR", tempfile.mkdtemp(prefix="ws4redis-test-db-")))
# The test database is this very file, so server subprocesses (which do not go through
# pytest-django) see the tables, and the rows of tests marked django_db(transaction=True).
DB_FILE = str(DB_DIR / "ws4redis.sqlite3")
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DB_FILE, "TEST": {"NAME": DB_FILE}}}

SECRET_KEY = "ws4redis-tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "ws4redis",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

SESSION_ENGINE = "django.contrib.sessions.backends.cache"

ROOT_URLCONF = "tests.project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "ws4redis.context_processors.default",
            ],
        },
    }
]

# As a project would configure it: what ws4redis says at INFO goes to the server's log.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"ws4redis": {"handlers": ["console"], "level": "INFO"}},
}

WEBSOCKET_URL = "/ws/"
WS4REDIS_EXPIRE = 3600
WS4REDIS_PREFIX = None
WS4REDIS_HEARTBEAT = None
# A hook module that imports models at the top, as a project's views.py does.
WS4REDIS_ALLOWED_CHANNELS = "tests.project.hooks.allowed_channels"
