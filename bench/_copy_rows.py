"""Rows of a model for PostgreSQL's COPY, as the ORM would write them: a benchmark names the
columns it cares about, every other column gets its field's default, as the ORM gives
it. Written out by hand, a seeding broke whenever the model gained a column."""

from __future__ import annotations

from typing import Any

from django.db import models
from psycopg.types.json import Jsonb


def copy_columns(model: type[models.Model]) -> list[str]:
    """The columns, in the order ``copy_row`` gives their values."""
    return [field.column for field in model._meta.concrete_fields]


def copy_row(model: type[models.Model], given: dict[str, Any]) -> list[Any]:
    """The values of one row, keyed in ``given`` by attribute name (``agent_id``)."""
    row = []
    for field in model._meta.concrete_fields:
        # The ORM's default where there is none: "" for text that may not be null.
        value = given[field.attname] if field.attname in given else field.get_default()
        if (
            isinstance(field, models.JSONField)
            and value is not None
            and not isinstance(value, Jsonb | str)
        ):
            value = Jsonb(value)
        row.append(value)
    return row
