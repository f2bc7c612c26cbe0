"""The project's Celery app (docs/celery.md).

Its configuration is the ``CELERY_*`` Django settings; its tasks are the ``tasks.py`` module of
each installed app. ``settings/__init__.py`` imports it, so that ``@shared_task`` binds to it in
every process: the web server, the services, the worker and beat.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")

# Named after this package, so that ``celery -A settings`` (what runsystem starts) finds it.
app = Celery("settings")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
