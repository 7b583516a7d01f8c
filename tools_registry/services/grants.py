"""Object permissions on tools (reviewer scopes), granted to users or teams, each audited.

The admin's object-permission pages, the demo seed and the tests all come through here,
so no grant or revoke escapes the audit trail. Guardian's direct foreign-key models are
written directly: ``get_or_create`` and ``delete`` tell whether anything changed, and only
a real change is audited.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from audit.log import record
from tools_registry.models import Tool, ToolGroupObjectPermission, ToolUserObjectPermission

# The only permissions that mean something on one tool; model-wide ones (change_tool...)
# are never granted per object.
OBJECT_PERMISSIONS = ("review_tool", "reveal_tool_arguments")


def _permission(codename: str) -> Permission:
    if codename not in OBJECT_PERMISSIONS:
        raise ValueError(f"{codename!r} cannot be granted on a tool; use {OBJECT_PERMISSIONS}")
    return Permission.objects.get(
        content_type=ContentType.objects.get_for_model(Tool), codename=codename
    )


def _subject(user: Any, group: Group | None) -> dict[str, Any]:
    if (user is None) == (group is None):
        raise ValueError("grant to exactly one of user or group")
    return {"user": user} if user is not None else {"group": group}


def _described(subject: dict[str, Any]) -> dict[str, str]:
    if "user" in subject:
        return {"user": subject["user"].get_username()}
    return {"group": subject["group"].name}


def _grant_model(
    subject: dict[str, Any],
) -> type[ToolUserObjectPermission | ToolGroupObjectPermission]:
    return ToolUserObjectPermission if "user" in subject else ToolGroupObjectPermission


def _refuse_own_grant(granted_by: Any, subject: dict[str, Any]) -> None:
    """A person who is not a superuser grants others, never themselves nor a team they are
    in: a tool admin's own grant would let them decide, or unmask, the calls of the tools
    they set the policy of, with nobody else involved (as the Users page keeps them from
    changing their own access). A superuser already reviews every tool."""
    if granted_by is None or granted_by.is_superuser:
        return
    if "user" in subject:
        own = subject["user"].pk == granted_by.pk
    else:
        own = subject["group"].user_set.filter(pk=granted_by.pk).exists()
    if own:
        raise PermissionDenied("Nobody grants themselves, or a team they are in, a tool.")


def _lock(tool: Tool) -> Tool:
    # Serialises concurrent grant edits on one tool (two admins on the same page).
    return Tool.objects.select_for_update().get(pk=tool.pk)


def hold_reviews_of(*, users: Iterable[Any] = (), groups: Iterable[Group] = ()) -> list[int]:
    """Lock ``FOR UPDATE``, in the order of their ids, the rows of the tools with calls waiting
    for approval, or a live standing approval given by one of the people, that the people
    (or any member of the teams) may review as stored now; their ids. Called, in the
    change's transaction, before it writes anything, by every change that may take away
    someone's right to approve other than a grant change (which locks its tool itself,
    ``_lock``): leaving a team (whose grants, or whose name a rule asks for, go with it), a
    team or a person deleted, an account deactivated, a superuser's status taken.

    A verdict and the quorum sweep hold the call's tool ``FOR KEY SHARE`` while they check
    and count the approvals (``approvals.sql.hold_tool_for``): the change then waits for a
    verdict under way, or the verdict for it and reads it as changed. Without this, the
    change committed between the count and its commit, and the trail showed a call approved
    after one of its approvers could no longer approve it.

    Only tools with a waiting call or such a standing approval (intake holds the row as a
    verdict does before it reads whether its author may still approve, and so waits for the
    change): there is nothing else to decide or count, and a person who reviews 10,000 tools
    leaves a team without locking (and holding up the intake of) 10,000 rows. A reviewer's
    approval stands only while they may review the tool
    (``approvals.guards.still_approving``), so a team a rule asks for is covered by the
    tools its members review. Nothing here locks a call, so no cycle with a verdict (the
    tool, then the call)."""
    people = get_user_model()._default_manager.filter(
        Q(pk__in=[u.pk for u in users]) | Q(groups__in=[g.pk for g in groups]), is_active=True
    )
    waiting = Tool._meta.get_field("calls").related_model  # approvals' ToolCall, above here
    standing = Tool._meta.get_field("standing_approvals").related_model  # and StandingApproval
    tools = Tool.objects.filter(
        # Status.PENDING, named as approvals stores it: the registry cannot import approvals.
        Exists(waiting._default_manager.filter(tool=OuterRef("pk"), status="pending"))
        # A live standing approval of one of them stands for its author's vote on each call
        # it covers, and intake holds the tool's row as a verdict does before it reads
        # whether its author may still approve (``approvals.services.standing.use``).
        | Exists(
            standing._default_manager.filter(
                tool=OuterRef("pk"),
                granted_by__in=people,
                revoked_at__isnull=True,
                expires_at__gt=timezone.now(),
            )
        )
    )
    if not people.filter(is_superuser=True).exists():  # a superuser reviews every tool
        reviewed = {"permission__codename": "review_tool"}
        tools = tools.filter(
            Q(
                pk__in=ToolUserObjectPermission.objects.filter(user__in=people, **reviewed).values(
                    "content_object"
                )
            )
            | Q(
                pk__in=ToolGroupObjectPermission.objects.filter(
                    group__user__in=people, **reviewed
                ).values("content_object")
            )
        )
    # In id order: two such changes at once never each hold a row the other waits for.
    return list(tools.select_for_update().order_by("pk").values_list("pk", flat=True))


def current_permissions(*, tool: Tool, user: Any = None, group: Group | None = None) -> set[str]:
    """The object permissions held directly by this user (not through teams) or this team."""
    subject = _subject(user, group)
    return set(
        _grant_model(subject)
        .objects.filter(content_object=tool, **subject)
        .values_list("permission__codename", flat=True)
    )


@transaction.atomic
def grant(
    *,
    tool: Tool,
    permission: str = "review_tool",
    granted_by: Any = None,
    user: Any = None,
    group: Group | None = None,
) -> bool:
    """Grant one permission on one tool; True if it was not held before (then audited).
    Raises ``PermissionDenied`` when ``granted_by`` grants themselves or a team of theirs."""
    subject = _subject(user, group)
    _refuse_own_grant(granted_by, subject)
    locked = _lock(tool)
    _, created = _grant_model(subject).objects.get_or_create(
        content_object=locked, permission=_permission(permission), **subject
    )
    if created:
        record(
            action="grant.added",
            actor=granted_by,
            tool=locked,
            data={"permission": permission, **_described(subject)},
            people=("user",),
        )
    return created


@transaction.atomic
def revoke(
    *,
    tool: Tool,
    permission: str = "review_tool",
    revoked_by: Any = None,
    user: Any = None,
    group: Group | None = None,
) -> bool:
    """Remove one permission on one tool; True if it was held (then audited)."""
    subject = _subject(user, group)
    locked = _lock(tool)
    deleted, _ = (
        _grant_model(subject)
        .objects.filter(content_object=locked, permission=_permission(permission), **subject)
        .delete()
    )
    if deleted:
        record(
            action="grant.removed",
            actor=revoked_by,
            tool=locked,
            data={"permission": permission, **_described(subject)},
            people=("user",),
        )
    return bool(deleted)


def grant_review(
    *, tool: Tool, granted_by: Any = None, user: Any = None, group: Group | None = None
) -> bool:
    """Let a user or a team review the calls of one tool."""
    return grant(tool=tool, granted_by=granted_by, user=user, group=group)


def revoke_review(
    *, tool: Tool, revoked_by: Any = None, user: Any = None, group: Group | None = None
) -> bool:
    return revoke(tool=tool, revoked_by=revoked_by, user=user, group=group)


@transaction.atomic
def set_permissions(
    *,
    tool: Tool,
    permissions: Iterable[str],
    changed_by: Any = None,
    user: Any = None,
    group: Group | None = None,
) -> tuple[list[str], list[str]]:
    """Make the subject hold exactly ``permissions`` on ``tool``; returns (added, removed)."""
    wanted = set(permissions)
    unknown = wanted - set(OBJECT_PERMISSIONS)
    if unknown:
        raise ValueError(f"{sorted(unknown)} cannot be granted on a tool")
    _lock(tool)
    held = current_permissions(tool=tool, user=user, group=group) & set(OBJECT_PERMISSIONS)
    added = sorted(wanted - held)
    removed = sorted(held - wanted)
    for codename in removed:
        revoke(tool=tool, permission=codename, revoked_by=changed_by, user=user, group=group)
    for codename in added:
        grant(tool=tool, permission=codename, granted_by=changed_by, user=user, group=group)
    return added, removed


def permission_names(permissions: Iterable[Permission]) -> list[str]:
    """Model-wide permissions as ``app_label.codename``, sorted (one query)."""
    return sorted(
        f"{app_label}.{codename}"
        for app_label, codename in Permission.objects.filter(
            pk__in=[p.pk for p in permissions]
        ).values_list("content_type__app_label", "codename")
    )


def access_of(
    user: Any, *, groups: Iterable[Group], permissions: Iterable[Permission]
) -> dict[str, Any]:
    """What decides which tools a person may review or administer, besides their own grants,
    and which calls they may not approve: separation of duties knows the person an agent
    acts for by their username and e-mail (``approvals.guards.conflict_with``)."""
    return {
        "username": user.get_username(),
        "email": user.email or "",
        "groups": sorted(g.name for g in groups),
        "permissions": permission_names(permissions),
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
    }


def record_access_change(*, user: Any, before: dict[str, Any], changed_by: Any) -> None:
    """Audit a change of a person's teams, model-wide permissions or status (made by
    Django's user admin).

    Team membership carries the team's grants, and a superuser reviews every tool, so these
    are grants too; a model-wide permission such as changing tools makes a tool admin, who
    grants the rest.
    """
    after = access_of(user, groups=user.groups.all(), permissions=user.user_permissions.all())
    if changes := _changes(before, after):
        record(
            action="user.access_changed",
            actor=changed_by,
            data={"user": user.get_username(), **changes},
            people=("user", "before.username", "after.username"),
        )


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``before`` and ``after`` of what changed between the two ({} if nothing did)."""
    changed = [key for key in after if after[key] != before.get(key)]
    if not changed:
        return {}
    return {
        "before": {key: before.get(key) for key in changed},
        "after": {key: after[key] for key in changed},
    }


def record_team_change(*, group: Group, before: dict[str, Any], changed_by: Any) -> None:
    """Audit a team renamed or given other model-wide permissions (Django's team admin).

    Policy rules and the single sign-on map name teams, so a rename changes who gives the
    approvals a rule asks for; the permissions are every member's.
    """
    after = {
        "name": group.name,
        "permissions": permission_names(group.permissions.all()),
    }
    if changes := _changes(before, after):
        record(
            action="auth.team_changed",
            actor=changed_by,
            data={
                "team": group.name,
                "members": sorted(u.get_username() for u in group.user_set.all()),
                **changes,
            },
            people=("members",),
        )


def record_team_creation(*, group: Group, created_by: Any) -> None:
    """Audit a team made in Django's team admin, with the model-wide permissions it was
    given: alone, the permissions' signal said Countersign had given them, to nobody's name
    (``record_team_change`` says who changed them later)."""
    record(
        action="auth.team_created",
        actor=created_by,
        data={"team": group.name, "permissions": permission_names(group.permissions.all())},
    )


def record_deletion(*, deleted_by: Any, user: Any = None, group: Group | None = None) -> None:
    """Audit a person or a team about to be deleted (Django's admin): their grants of tools
    and their teams or members go with them, without a ``grant.removed`` or a teams change
    of their own (deleting cascades past the signals). Locks the tools they reviewed first
    (``hold_reviews_of``), so call it in the deletion's transaction."""
    subject = _subject(user, group)
    # The person's (the members') say-so on waiting calls goes with them: a verdict or the
    # quorum sweep counting it finishes first.
    hold_reviews_of(users=[user] if user is not None else [], groups=[group] if group else [])
    grants: dict[str, list[str]] = {}
    for tool_name, codename in (
        _grant_model(subject)
        .objects.filter(**subject, permission__codename__in=OBJECT_PERMISSIONS)
        .values_list("content_object__name", "permission__codename")
        .order_by("content_object__name", "permission__codename")
    ):
        grants.setdefault(tool_name, []).append(codename)
    if group is not None:
        action = "auth.team_deleted"
        data: dict[str, Any] = {
            "team": group.name,
            "members": sorted(u.get_username() for u in group.user_set.all()),
        }
    else:
        action = "auth.user_deleted"
        data = {
            "user": user.get_username(),
            "teams": sorted(g.name for g in user.groups.all()),
            "is_superuser": user.is_superuser,
        }
    record(
        action=action,
        actor=deleted_by,
        data={**data, "grants": grants},
        people=("user", "members"),
    )
