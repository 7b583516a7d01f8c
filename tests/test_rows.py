"""config.rows, the hot path's plain SQL: rows as the ORM writes and reads them, and the
database's errors as Django's own, so callers and atomic blocks behave as with the ORM."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.db.transaction import TransactionManagementError

from config import rows

pytestmark = pytest.mark.django_db


def test_an_insert_is_the_orm_s_row() -> None:
    group = rows.insert(Group(name="night shift"))
    assert group.pk is not None and not group._state.adding
    assert Group.objects.get(pk=group.pk).name == "night shift"


def test_a_constraint_violation_is_django_s_integrity_error_and_rolls_back() -> None:
    rows.insert(Group(name="night shift"))
    with pytest.raises(IntegrityError), transaction.atomic():
        rows.insert(Group(name="day shift"))
        rows.insert(Group(name="night shift"))
    assert list(Group.objects.order_by("name").values_list("name", flat=True)) == ["night shift"]


def test_no_statement_runs_in_a_transaction_that_must_roll_back() -> None:
    with transaction.atomic():
        transaction.set_rollback(True)  # what an error caught inside the block leaves
        with pytest.raises(TransactionManagementError):
            rows.insert(Group(name="after the error"))


def test_an_update_changes_only_the_rows_its_conditions_match() -> None:
    night = rows.insert(Group(name="night shift"))
    rows.insert(Group(name="day shift"))
    assert rows.update(Group, {"name": "late shift"}, where={"id": night.pk, "name": "day"}) == 0
    assert rows.update(Group, {"name": "late shift"}, where={"id": night.pk}) == 1
    names = Group.objects.order_by("name").values_list("name", flat=True)
    assert list(names) == ["day shift", "late shift"]
