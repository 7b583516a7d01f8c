"""The policy what-if page: a tool admin's proposed rules, tried on the tool's past calls
before they are saved. Reached from the tool's admin page (its "Try these rules" button
posts the rules being edited here)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from approvals import whatif
from approvals.views.common import AuthedRequest
from tools_registry import rules
from tools_registry.models import Tool

DEFAULT_DAYS = 14


@require_http_methods(["GET", "POST"])
@staff_member_required
@never_cache
def what_if(request: AuthedRequest, tool_id: int) -> HttpResponse:
    tool = get_object_or_404(Tool, pk=tool_id)
    if not request.user.has_perm("tools_registry.change_tool"):
        raise PermissionDenied
    source = request.POST if request.method == "POST" else request.GET
    raw = source.get("rules")
    text = raw if raw is not None else json.dumps(tool.rules, indent=2)
    days = _days(source.get("whatif_days"))
    context: dict[str, Any] = {
        "tool": tool,
        "rules_text": text,
        "days": days,
        "max_days": whatif.MAX_DAYS,
    }
    try:
        proposed = json.loads(text or "[]")
    except RecursionError:
        context["problems"] = ["The rules are nested too deeply to read."]
        return render(request, "approvals/what_if.html", context, status=400)
    except ValueError as exc:
        context["problems"] = [f"The rules are not valid JSON: {exc}."]
        return render(request, "approvals/what_if.html", context, status=400)
    teams = frozenset(Group.objects.values_list("name", flat=True))
    problems = rules.problems(proposed, risk=tool.risk, input_schema=tool.input_schema, teams=teams)
    if problems:
        context["problems"] = problems
        return render(request, "approvals/what_if.html", context, status=400)
    context["report"] = whatif.run(tool, rules.parse(proposed), days=days)
    context["proposed"] = rules.parse(proposed)
    return render(request, "approvals/what_if.html", context)


def _days(raw: str | None) -> int:
    try:
        return max(1, min(int(raw or DEFAULT_DAYS), whatif.MAX_DAYS))
    except ValueError:
        return DEFAULT_DAYS
