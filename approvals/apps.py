from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from approvals import hooks, reauth, signals
        from approvals.execution import claim
        from approvals.services import calls, recovery, standing
        from tools_registry import hooks as registry_hooks

        # Every process refuses to start on working hours it cannot read.
        signals.check_working_hours()
        # Destructive approvals need a recent sign-in; remember when this session's was.
        user_logged_in.connect(reauth.on_login, dispatch_uid="approvals.reauth.on_login")
        # A recipient or record a call took effect on is no longer new to its agent.
        hooks.on_status_changed(signals.remember_counterparties)
        # A stopped agent's calls that wait for a decision are cancelled with the stop.
        registry_hooks.on_agent_stopped(calls.cancel_for_stop)
        # Its standing approvals are revoked: after a resume, each call has its own approval.
        registry_hooks.on_agent_stopped(standing.revoke_for_stop)
        # Its calls whose outcome is unknown are left to a person: a resume is no re-run.
        registry_hooks.on_agent_stopped(recovery.leave_unknown_to_a_person)
        # Its approved calls not yet claimed fail unrun: a resume is no decision to run them.
        # Last: a call approved while the receivers above waited for its row is one of them.
        registry_hooks.on_agent_stopped(claim.refuse_approved_for_stop)
