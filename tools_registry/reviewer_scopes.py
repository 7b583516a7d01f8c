"""Who may review (and reveal) what: direct grants and those inherited from a team, read
for the admin's reviewer-scopes pages (``tools_registry.admin_scopes``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from tools_registry.models import Tool, ToolGroupObjectPermission, ToolUserObjectPermission
from tools_registry.services.grants import OBJECT_PERMISSIONS


@dataclass
class Cell:
    """One permission of one subject on one tool: held directly, through teams, or as a
    superuser (who holds every permission)."""

    direct: bool = False
    teams: list[str] = field(default_factory=list)
    superuser: bool = False

    @property
    def held(self) -> bool:
        return self.direct or bool(self.teams) or self.superuser


@dataclass
class Row:
    kind: str  # "user" or "group"
    pk: int
    name: str
    cells: dict[str, Cell]  # permission codename -> cell

    @property
    def subject(self) -> str:
        return f"{self.kind}:{self.pk}"


def _empty() -> dict[str, Cell]:
    return {codename: Cell() for codename in OBJECT_PERMISSIONS}


def for_tool(tool: Tool) -> tuple[list[Row], list[Row]]:
    """(people, teams) who hold a permission on ``tool``, each with direct and inherited
    grants. Four queries, whatever the number of people."""
    team_grants: dict[int, set[str]] = defaultdict(set)
    for group_id, codename in ToolGroupObjectPermission.objects.filter(
        content_object=tool, permission__codename__in=OBJECT_PERMISSIONS
    ).values_list("group_id", "permission__codename"):
        team_grants[group_id].add(codename)
    groups = {g.pk: g for g in Group.objects.filter(pk__in=team_grants).order_by("name")}
    people: dict[int, Row] = {}
    user_model = get_user_model()

    def row_of(user: Any) -> Row:
        if user.pk not in people:
            people[user.pk] = Row("user", user.pk, user.get_username(), _empty())
        return people[user.pk]

    for grant in ToolUserObjectPermission.objects.filter(
        content_object=tool, permission__codename__in=OBJECT_PERMISSIONS, user__is_active=True
    ).select_related("user", "permission"):
        row_of(grant.user).cells[grant.permission.codename].direct = True
    members = user_model._default_manager.filter(
        groups__in=list(groups), is_active=True
    ).values_list("pk", "groups__pk")
    users = user_model._default_manager.in_bulk({pk for pk, _ in members})
    for user_pk, group_pk in members:
        if group_pk not in groups:
            continue
        row = row_of(users[user_pk])
        for codename in team_grants[group_pk]:
            row.cells[codename].teams.append(groups[group_pk].name)
    for user in user_model._default_manager.filter(is_superuser=True, is_active=True):
        for cell in row_of(user).cells.values():
            cell.superuser = True
    teams = [
        Row(
            "group",
            g.pk,
            g.name,
            {c: Cell(direct=c in team_grants[g.pk]) for c in OBJECT_PERMISSIONS},
        )
        for g in groups.values()
    ]
    return sorted(people.values(), key=lambda r: r.name.lower()), teams


def for_subject(
    *, user: Any = None, group: Group | None = None
) -> list[tuple[Tool, dict[str, Cell]]]:
    """Every tool with what one person (directly, through teams, as superuser) or one team
    holds on it."""
    tools = list(Tool.objects.order_by("name"))
    cells: dict[int, dict[str, Cell]] = {tool.pk: _empty() for tool in tools}
    if group is not None:
        for tool_id, codename in ToolGroupObjectPermission.objects.filter(
            group=group, permission__codename__in=OBJECT_PERMISSIONS
        ).values_list("content_object_id", "permission__codename"):
            cells[tool_id][codename].direct = True
        return [(tool, cells[tool.pk]) for tool in tools]
    for tool_id, codename in ToolUserObjectPermission.objects.filter(
        user=user, permission__codename__in=OBJECT_PERMISSIONS
    ).values_list("content_object_id", "permission__codename"):
        cells[tool_id][codename].direct = True
    for tool_id, codename, team in ToolGroupObjectPermission.objects.filter(
        group__in=user.groups.all(), permission__codename__in=OBJECT_PERMISSIONS
    ).values_list("content_object_id", "permission__codename", "group__name"):
        cells[tool_id][codename].teams.append(team)
    if user.is_superuser:
        for tool_cells in cells.values():
            for cell in tool_cells.values():
                cell.superuser = True
    return [(tool, cells[tool.pk]) for tool in tools]
