"""Countersign's PostgreSQL backend: Django's own, plus the statements ``core.db.later``
holds back until the transaction's next statement or its COMMIT.

Every statement of the transaction, the ORM's included, first sends what is held back, in
the same round trip when it is one of ``core.db``'s and just before it otherwise, so the
database sees the statements in the order the code made them. COMMIT goes out with what
is held back, in one round trip; a rollback (of the transaction, or to a savepoint) drops
it, as it would have undone it. Savepoints are statements too: nothing held back ever
crosses one.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base
from django.db.backends.utils import debug_transaction

from core import db


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.later: list[db.Statement[Any]] = []
        self.execute_wrappers.append(self._send_later_first)

    def _send_later_first(
        self, execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if self.later:
            db.send_later(self)
        return execute(sql, params, many, context)

    def _commit(self) -> None:
        if self.later and self.connection is not None:
            with debug_transaction(self, "COMMIT"):
                db.send_later(self, commit=True)
        else:
            super()._commit()  # type: ignore[misc]  # private in the stubs

    def _rollback(self) -> None:
        self.later.clear()
        super()._rollback()  # type: ignore[misc]

    def _savepoint_rollback(self, sid: str) -> None:
        # Everything held back came after the last savepoint statement (which sent what
        # was held back before it), so after this savepoint: undone by the rollback.
        self.later.clear()
        super()._savepoint_rollback(sid)  # type: ignore[misc]

    def _close(self) -> None:
        self.later.clear()
        super()._close()  # type: ignore[misc]
