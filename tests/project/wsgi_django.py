"""0.6.0's wsgi_django.py of the two-server setup: Django alone, on ``uwsgi --socket``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
