"""Settings of the site bench_submit.py serves: Countersign's own, plus one bare view.

Used as DJANGO_SETTINGS_MODULE of the benchmark's gunicorn, so that both endpoints run in
the same processes, behind the same middleware, on the same database.
"""

from __future__ import annotations

from config.settings import *  # noqa: F403 - the deployed settings, but for the URLs

ROOT_URLCONF = "submit_urls"
