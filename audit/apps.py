from __future__ import annotations

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group
        from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
        from django.db.models.signals import m2m_changed

        from audit import receivers

        user_logged_in.connect(receivers.on_login, dispatch_uid="audit.login")
        user_logged_out.connect(receivers.on_logout, dispatch_uid="audit.logout")
        user_login_failed.connect(receivers.on_login_failed, dispatch_uid="audit.login_failed")
        m2m_changed.connect(
            receivers.on_groups_changed,
            sender=get_user_model().groups.through,
            dispatch_uid="audit.groups_changed",
        )
        for through, uid in (
            (get_user_model().user_permissions.through, "audit.user_permissions_changed"),
            (Group.permissions.through, "audit.group_permissions_changed"),
        ):
            m2m_changed.connect(
                receivers.on_model_permissions_changed, sender=through, dispatch_uid=uid
            )
        receivers.install_log_masking()
