"""Row locks under test: a change run in a thread of its own (with its own connection), and
whether a change that waits for one row holds another meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from django.db import OperationalError, connections, transaction
from django.db.models import Model


def in_a_thread(action: Callable[[], object]) -> threading.Thread:
    """``action`` started in a thread of its own; its database connection is closed when it
    ends (Django opens one per thread)."""

    def run() -> None:
        try:
            action()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def takes_in_id_order(change: Callable[[], object], *, lower: Model, higher: Model) -> None:
    """Assert that ``change``, while another transaction holds ``lower``'s row, waits for it
    without having taken ``higher``'s: it locks rows in the order of their ids, as every
    change that locks several tools does (``tools_registry.services.grants.hold_reviews_of``).
    One that held the higher row while waiting for the lower one deadlocked with a change
    that held the lower one and then asked for the higher."""
    with transaction.atomic():
        type(lower)._default_manager.select_for_update().get(pk=lower.pk)
        changing = in_a_thread(change)
        time.sleep(1)
        assert changing.is_alive(), "the change waits for the lower row"
        try:
            with transaction.atomic():
                type(higher)._default_manager.select_for_update(nowait=True).get(pk=higher.pk)
            free = True
        except OperationalError:
            free = False
    changing.join(30)
    assert free, "the change held the higher row while waiting for the lower one"
