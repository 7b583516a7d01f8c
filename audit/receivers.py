"""Sign-in events and log masking, wired up in ``AuditConfig.ready``.

Django announces sign-ins through signals, so the receivers here are the only place that
can audit them. The password never reaches the trail: Django cleanses the credentials it
passes to ``user_login_failed``, and these receivers keep only the name tried.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.http import HttpRequest

from audit.log import Claimed, record
from audit.masking import mask_text, masked, without_quoted_input


def _client(request: HttpRequest | None) -> dict[str, str]:
    if request is None:
        return {}
    # REMOTE_ADDR only: X-Forwarded-For is whatever the client chose to send.
    return {
        "ip": request.META.get("REMOTE_ADDR", ""),
        "user_agent": request.META.get("HTTP_USER_AGENT", "")[:200],
    }


def on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    record(action="auth.login", actor=user, outcome="ok", data=_client(request))


# Set on the request of a sign-out the person did not ask for: why their session ended
# (accounts.sessions: "max_age", "idle").
SIGN_OUT_REASON = "countersign_sign_out_reason"


def on_logout(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if user is not None:
        reason = getattr(request, SIGN_OUT_REASON, None)
        data = {**_client(request), **({"reason": reason} if reason else {})}
        record(action="auth.logout", actor=user, outcome="ok", data=data)


def attempted_name(tried: str) -> tuple[str, bool]:
    """The name a sign-in attempt gave, as the trail keeps it, and whether it is an account.
    People type their password into the name field: a name that is no account is kept only
    as a fingerprint, so repeated attempts still correlate."""
    tried = tried[:150]
    known = (
        bool(tried)
        and get_user_model()
        ._default_manager.filter(**{get_user_model().USERNAME_FIELD: tried})
        .exists()
    )
    return (tried if known else masked("username", tried)), known


def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    label, known = attempted_name(str(credentials.get(get_user_model().USERNAME_FIELD) or ""))
    record(
        action="auth.login_failed",
        actor=Claimed(label),
        outcome="failed",
        data={**_client(request), "known_user": known},
    )


def on_groups_changed(
    sender: Any, instance: Any, action: str, pk_set: set[Any] | None, model: Any, **kwargs: Any
) -> None:
    """A person's teams decide their role (reviewer, auditor, tool admin)."""
    if action not in {"post_add", "post_remove", "post_clear"} or _nothing_changed(action, pk_set):
        return
    user_model = get_user_model()
    if isinstance(instance, user_model):
        users, groups = [instance.get_username()], _group_names(model, pk_set)
    else:  # reverse side: group.user_set.add(...)
        users = sorted(
            user_model._default_manager.filter(pk__in=pk_set or []).values_list(
                user_model.USERNAME_FIELD, flat=True
            )
        )
        groups = [str(instance)]
    record(
        action="auth.groups_changed",
        outcome=action.removeprefix("post_"),
        data={"users": users, "groups": groups},
        people=("users",),
    )


def on_model_permissions_changed(
    sender: Any, instance: Any, action: str, pk_set: set[Any] | None, model: Any, **kwargs: Any
) -> None:
    """Model-wide permissions (e.g. audit.view_auditevent) given to or taken from a person
    or a team, from either side of the relation."""
    if action not in {"post_add", "post_remove", "post_clear"} or _nothing_changed(action, pk_set):
        return
    if isinstance(instance, Permission):  # reverse side: permission.user_set.add(...)
        holders = _holder_names(model, pk_set)
        permissions = [_permission_name(instance)]
        holder_model = model
    else:
        holders = [str(getattr(instance, "name", "") or instance.get_username())]
        permissions = sorted(
            _permission_name(p) for p in Permission.objects.filter(pk__in=pk_set or [])
        )
        holder_model = type(instance)
    kind = "groups" if issubclass(holder_model, Group) else "users"
    record(
        action="auth.permissions_changed",
        outcome=action.removeprefix("post_"),
        data={kind: holders, "permissions": permissions},
        people=("users",),
    )


def _nothing_changed(action: str, pk_set: set[Any] | None) -> bool:
    """Django sends post_add for links that all existed already (and post_remove for none
    that did) with an empty ``pk_set``: no change, so no event."""
    return action in {"post_add", "post_remove"} and not pk_set


def _holder_names(model: Any, pk_set: set[Any] | None) -> list[str]:
    field = "name" if issubclass(model, Group) else model.USERNAME_FIELD
    return sorted(model._default_manager.filter(pk__in=pk_set or []).values_list(field, flat=True))


def _permission_name(permission: Permission) -> str:
    return f"{permission.content_type.app_label}.{permission.codename}"


def _group_names(model: Any, pk_set: set[Any] | None) -> list[str]:
    if not pk_set:
        return []
    return sorted(model._default_manager.filter(pk__in=pk_set).values_list("name", flat=True))


_base_factory = logging.getLogRecordFactory()

# Django's log of every statement (DEBUG=1 with DB_LOG_LEVEL=DEBUG): "(%.3f) %s; args=%s;
# alias=%s", the statement with its values written in, then the values. A value there is a
# bare string that names nothing (a webhook secret, a TOTP key, a session key in VALUES (...)
# or in the args), so no detector can tell it from data: the strings are left out, the
# statement's shape and numbers kept.
_SQL_LOGGER = "django.db.backends"
_SQL_STRING = re.compile(r"'(?:[^']|'')*'")


def _without_sql_values(log_record: logging.LogRecord) -> None:
    if log_record.name != _SQL_LOGGER or not (
        isinstance(log_record.args, tuple) and len(log_record.args) == 4
    ):
        return
    duration, statement, values, alias = log_record.args
    if values is not None:  # None: a BEGIN, COMMIT or ROLLBACK
        values = f"[{len(values)} values]" if isinstance(values, list | tuple | dict) else "[...]"
    log_record.args = (duration, _SQL_STRING.sub("'...'", str(statement)), values, alias)


def _masked(text: str) -> str:
    # The MCP SDK logs an answer its types refused with its traceback: what pydantic quotes
    # of it may hold the end of a credential the server quoted back.
    return mask_text(without_quoted_input(text))


def masking_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Mask every log record when it is made, before any handler (ours, Celery's, a test's
    capture) can see it; the traceback text too, as exception messages quote values."""
    log_record = _base_factory(*args, **kwargs)
    _without_sql_values(log_record)
    try:
        message = log_record.getMessage()
    except Exception:
        # Arguments the message does not fit ("charged %s %s" with one): logging's error
        # report printed the message and its arguments as they were, the traceback with them
        # (it was not masked either). Both are kept, masked, in one message.
        message = f"{log_record.msg} (arguments: {log_record.args!r})"
        log_record.msg, log_record.args = message, ()
    cleaned = _masked(message)
    if cleaned != message:
        log_record.msg, log_record.args = cleaned, ()
    if log_record.exc_info and log_record.exc_info[0] is not None:
        log_record.exc_text = _masked(logging.Formatter().formatException(log_record.exc_info))
    return log_record


def install_log_masking() -> None:
    if logging.getLogRecordFactory() is not masking_record_factory:
        logging.setLogRecordFactory(masking_record_factory)
