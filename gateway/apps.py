from __future__ import annotations

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Agent gateway"

    def ready(self) -> None:
        from approvals import hooks
        from gateway import breaker, checks, notify  # noqa: F401 (checks: registered)

        # The lifecycle below tells the edge what happened, without importing it.
        hooks.on_status_changed(notify.status_changed)
        hooks.on_status_changed(breaker.unrun)
        hooks.on_execution_finished(breaker.observe)
