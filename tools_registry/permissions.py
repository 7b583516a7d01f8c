"""Who may review which tool's calls: django-guardian object permissions on Tool.

Only object grants count (to the user or to one of their groups). A model-wide
``review_tool`` permission is deliberately ignored, so it can never leak every tool.
Superusers may review everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from guardian.shortcuts import get_objects_for_user

from tools_registry.models import Tool, ToolGroupObjectPermission, ToolUserObjectPermission

REVIEW_PERMISSION = "tools_registry.review_tool"
REVEAL_PERMISSION = "tools_registry.reveal_tool_arguments"


def reviewable_tool_ids(user: Any) -> list[int]:
    """The ids of the tools whose calls ``user`` may see and decide (one query)."""
    if not user.is_authenticated or not user.is_active:
        return []
    return list(
        get_objects_for_user(
            user, REVIEW_PERMISSION, klass=Tool, accept_global_perms=False, with_superuser=True
        ).values_list("pk", flat=True)
    )


def reviewable_tools(user: Any) -> QuerySet[Tool]:
    """The tools whose calls ``user`` may see and decide.

    The grants are read here, in one query, and handed on as literal ids. Left as a
    subquery, PostgreSQL plans a reviewer's queue blind: for a reviewer of a rarely used
    tool it walks every pending call in date order to find a few (117 ms at 100,000 pending
    calls, against 0.3 ms with the ids known; see bench/bench_queue_permissions.py).
    """
    if not user.is_authenticated or not user.is_active:
        return Tool.objects.none()
    if user.is_superuser:
        return Tool.objects.all()
    return Tool.objects.filter(pk__in=reviewable_tool_ids(user))


def has_any_review_grant(user: Any) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return Tool.objects.exists()
    return bool(reviewable_tool_ids(user))


def can_review(user: Any, tool: Tool) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    # ModelBackend answers False for any object check, so only guardian's grants count.
    return bool(user.has_perm(REVIEW_PERMISSION, tool))


def reviewers_among(tool: Tool, people: Iterable[Any]) -> set[Any]:
    """The ids of those of ``people`` who ``can_review`` ``tool``, in one query at most (the
    quorum sweep asks it of every approver of each call it looks at: guardian's check cost
    two queries a person, a third of the time of a call it could not approve)."""
    active = [person for person in people if person.is_authenticated and person.is_active]
    found = {person.pk for person in active if person.is_superuser}
    others = {person.pk for person in active} - found
    if others:
        # Guardian's own test: the permission of the tool's content type, granted on it.
        review = {
            "content_object": tool,
            "permission__codename": REVIEW_PERMISSION.partition(".")[2],
            "permission__content_type__app_label": Tool._meta.app_label,
            "permission__content_type__model": Tool._meta.model_name,
        }
        own = ToolUserObjectPermission.objects.filter(user=OuterRef("pk"), **review)
        team = ToolGroupObjectPermission.objects.filter(group__user=OuterRef("pk"), **review)
        found |= set(
            get_user_model()
            .objects.filter(Exists(own) | Exists(team), pk__in=others)
            .values_list("pk", flat=True)
        )
    return found


def require_reviewer(user: Any, tool: Tool) -> None:
    if not can_review(user, tool):
        raise PermissionDenied(f"You may not review calls of {tool.name}.")


def can_reveal(user: Any, tool: Tool) -> bool:
    return user.is_authenticated and bool(user.has_perm(REVEAL_PERMISSION, tool))


def revealable_tool_ids(user: Any) -> set[int]:
    """The ids of the tools ``user`` may reveal the masked arguments of: ``can_reveal`` of
    every tool, in one query (a page asks it of each of its rows)."""
    if not user.is_authenticated or not user.is_active:
        return set()
    return set(
        get_objects_for_user(
            user, REVEAL_PERMISSION, klass=Tool, accept_global_perms=False, with_superuser=True
        ).values_list("pk", flat=True)
    )
