"""The admin's reviewer-scopes pages: per tool, and per person or team, who may review and
reveal what, directly or through a team, with grant and revoke buttons that go through the
audited grant services. They replace guardian's object-permission pages for tool admins
(those stay reachable by superusers only)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_POST

from audit.filters import whole_number
from tools_registry import reviewer_scopes
from tools_registry.models import Tool
from tools_registry.services.grants import OBJECT_PERMISSIONS, grant, revoke

PERMISSION_NAMES = {"review_tool": "Review", "reveal_tool_arguments": "Reveal arguments"}
# What each permission lets one do, said of a tool: "bob may now review the calls of x".
PERMISSION_VERBS = {
    "review_tool": "review the calls of",
    "reveal_tool_arguments": "reveal the masked arguments of",
}


def subject_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    """People and teams for the pickers, grouped: never a name typed as free text."""
    people = [
        (f"user:{pk}", name)
        for pk, name in get_user_model()
        ._default_manager.filter(is_active=True)
        .order_by("username")
        .values_list("pk", "username")
    ]
    teams = [
        (f"group:{pk}", name)
        for pk, name in Group.objects.order_by("name").values_list("pk", "name")
    ]
    return [("Teams", teams), ("People", people)]


def parse_subject(value: str) -> dict[str, Any]:
    """``user:<id>`` or ``group:<id>`` as the services' keyword arguments; 404 otherwise."""
    kind, _, raw = value.partition(":")
    pk = whole_number(raw)
    if pk is None:
        raise Http404("Choose a person or a team.")
    if kind == "user":
        user = get_user_model()._default_manager.filter(pk=pk, is_active=True).first()
        if user is not None:
            return {"user": user}
    elif kind == "group":
        group = Group.objects.filter(pk=pk).first()
        if group is not None:
            return {"group": group}
    raise Http404("No such person or team.")


class GrantForm(forms.Form):
    subject = forms.ChoiceField(label="Person or team")
    permission = forms.ChoiceField(
        choices=[(c, PERMISSION_NAMES[c]) for c in OBJECT_PERMISSIONS], label="Permission"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        subject = self.fields["subject"]
        assert isinstance(subject, forms.ChoiceField)
        subject.choices = [("", "Choose…"), *subject_choices()]


class ReviewerScopesMixin:
    """Adds the reviewer-scopes pages to ``ToolAdmin``."""

    admin_site: Any
    model: type[Tool]
    get_object: Any  # ModelAdmin's

    def scope_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("scopes/", wrap(self.scopes_view), name="tools_registry_tool_scopes"),
            path("scopes/change/", wrap(require_POST(self.scopes_change_view)), name="tools_registry_tool_scopes_change"),
            path("<path:object_id>/reviewers/", wrap(self.reviewers_view), name="tools_registry_tool_reviewers"),
        ]  # fmt: skip

    def _require_admin(self, request: HttpRequest, *, change: bool) -> None:
        perm = "tools_registry.change_tool" if change else "tools_registry.view_tool"
        if not request.user.has_perm(perm):
            raise PermissionDenied

    def reviewers_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One tool: every person and team who may review or reveal it, and how."""
        self._require_admin(request, change=False)
        # The admin's own lookup: an id that is not a number is no tool (not a 500).
        tool = self.get_object(request, unquote(object_id))
        if tool is None:
            raise Http404("No such tool.")
        people, teams = reviewer_scopes.for_tool(tool)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Reviewers of {tool.name}",
            "tool": tool,
            "people": people,
            "teams": teams,
            "permissions": [(c, PERMISSION_NAMES[c]) for c in OBJECT_PERMISSIONS],
            "form": GrantForm(),
            "can_change": request.user.has_perm("tools_registry.change_tool"),
            "here": request.get_full_path(),
            "opts": self.model._meta,
            "original": tool,
        }
        return TemplateResponse(request, "admin/tools_registry/tool/reviewers.html", context)

    def scopes_view(self, request: HttpRequest) -> HttpResponse:
        """One person or team: every tool, with what they may review or reveal on it."""
        self._require_admin(request, change=False)
        chosen = request.GET.get("subject", "")
        subject = parse_subject(chosen) if chosen else None
        context = {
            **self.admin_site.each_context(request),
            "title": "Reviewer scopes",
            "subjects": subject_choices(),
            "chosen": chosen,
            "subject": subject,
            "rows": reviewer_scopes.for_subject(**subject) if subject else [],
            "permissions": [(c, PERMISSION_NAMES[c]) for c in OBJECT_PERMISSIONS],
            "can_change": request.user.has_perm("tools_registry.change_tool"),
            "here": request.get_full_path(),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/tools_registry/tool/scopes.html", context)

    def scopes_change_view(self, request: HttpRequest) -> HttpResponse:
        """Grant or revoke one permission on one tool for one person or team (audited by
        the grant services, which also tell whether anything changed)."""
        self._require_admin(request, change=True)
        tool_pk = whole_number(request.POST.get("tool", ""))
        tool = Tool.objects.filter(pk=tool_pk).first() if tool_pk is not None else None
        permission = request.POST.get("permission", "")
        operation = request.POST.get("op", "")
        if (
            tool is None
            or permission not in OBJECT_PERMISSIONS
            or operation not in ("grant", "revoke")
        ):
            raise Http404("Choose a tool, a permission, and grant or revoke.")
        subject = parse_subject(request.POST.get("subject", ""))
        name = subject["user"].get_username() if "user" in subject else subject["group"].name
        what = f"{PERMISSION_VERBS[permission]} {tool.name}"
        target = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
            target = reverse("admin:tools_registry_tool_reviewers", args=[tool.pk])
        if operation == "grant":
            try:
                changed = grant(
                    tool=tool, permission=permission, granted_by=request.user, **subject
                )
            except PermissionDenied as refusal:
                # Oneself, or a team one is in: said on the page the grant was asked from.
                messages.error(request, f"{name} may not {what}: {refusal}")
                return HttpResponseRedirect(target)
            text = f"{name} may now {what}." if changed else f"{name} could already {what}."
        else:
            changed = revoke(tool=tool, permission=permission, revoked_by=request.user, **subject)
            text = (
                f"{name} may no longer {what} (through a team they still may)."
                if changed
                and "user" in subject
                and _through_team(subject["user"], tool, permission)
                else f"{name} may no longer {what}."
                if changed
                else f"{name} had no direct grant to {what}."
            )
        messages.success(request, text)
        return HttpResponseRedirect(target)


def _through_team(user: Any, tool: Tool, permission: str) -> bool:
    return any(
        cell.teams
        for t, cells in reviewer_scopes.for_subject(user=user)
        if t.pk == tool.pk
        for code, cell in cells.items()
        if code == permission
    )


def scopes_url(subject: str) -> str:
    return f"{reverse('admin:tools_registry_tool_scopes')}?{urlencode({'subject': subject})}"
