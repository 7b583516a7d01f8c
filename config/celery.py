"""The Celery app. Settings come from Django's settings under the CELERY_ prefix.

Celery's Django fixup closes inherited database connections (and the psycopg pool) in each
forked worker child, so nothing here needs to. Between tasks, though, the fixup would
also close the child's whole pool (and with it every connection) before and after each
task, making each task open a new PostgreSQL connection; ``CELERY_DB_REUSE_MAX`` spaces
those closes out, and ``release_connections`` below hands the connection back to the pool
after each task instead, closing it if it broke, as Django does after each request.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals
from django.db import connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("countersign")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The executor's task lives in a package of its app, not in the app's ``tasks`` module.
app.autodiscover_tasks(["approvals.execution"])


@signals.task_postrun.connect
def release_connections(task: Any = None, **kwargs: Any) -> None:
    if task is None or getattr(task.request, "is_eager", False):
        return  # an eager task runs inside the caller's request or transaction
    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()
