"""The tool admins' screens. Every change goes through ``tools_registry.services``, so the
admin can neither skip the policy rules nor leave a change out of the audit trail."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.db.models import Count, ProtectedError, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timeuntil
from guardian.admin import (
    AdminGroupObjectPermissionsForm,
    AdminUserObjectPermissionsForm,
    GuardedModelAdmin,
)

from audit.filters import whole_number
from core.admin_lookups import SecretsNotLookedUp
from core.admin_saves import ChangedMeanwhileRefused, UniqueNameRaceShown
from tools_registry import role_scopes, rule_teams, services
from tools_registry.admin_scopes import ReviewerScopesMixin
from tools_registry.lint import lint_tool
from tools_registry.models import (
    TOKEN_ALGORITHMS,
    Agent,
    AgentToken,
    IdentityProvider,
    Tool,
    Upstream,
    without_password,
)
from tools_registry.policy import POLICY_FIELDS, Risk, policy_values
from tools_registry.rules import teams_named
from tools_registry.schemas import argument_paths
from tools_registry.services.agents import AGENT_FIELDS, MAX_STOP_REASON
from tools_registry.services.identity_providers import FIELDS as IDENTITY_PROVIDER_SETTINGS
from tools_registry.services.sync import policy_for_new_risk
from tools_registry.services.upstreams import SETTINGS as UPSTREAM_SETTINGS
from tools_registry.services.upstreams import (
    delete_upstream,
    edit_imported_tool,
    register_upstream,
    set_upstream_enabled,
    sync_upstream,
    update_upstream,
)
from tools_registry.upstreams.offers import ImportFailed
from tools_registry.upstreams.secrets import parse_header_lines

PERMISSION_LABELS = {
    "review_tool": "Review this tool's calls",
    "reveal_tool_arguments": "Reveal this tool's masked arguments",
}


# --- Tools: policy and lint -------------------------------------------------------------


class PrettyJSONField(forms.JSONField):
    """A JSON field an admin can read: indented, keys in their order."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        text = json.dumps(value, indent=2, ensure_ascii=False)
        try:
            text.encode()
        except UnicodeEncodeError:
            # An unpaired surrogate (typed as \ud800) cannot be written into the page: the
            # form shown again with its error was a 500. Its escape can, and reads back.
            return json.dumps(value, indent=2)
        return text

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError:  # Django catches only JSONDecodeError: a 500 otherwise
            raise forms.ValidationError("This JSON is nested too deeply.", code="invalid") from None
        except ValueError:
            # Valid JSON Python will not read: a whole number of more than 4300 digits.
            raise forms.ValidationError(
                "This JSON holds a number too long to read.", code="invalid"
            ) from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except (RecursionError, ValueError):
            return forms.fields.InvalidJSONInput(data)


class RulesWidget(forms.Textarea):
    """The rules' editor, with a button that tries them on past calls before saving: it
    posts the form to the policy what-if page (``what_if_url``, set per tool)."""

    what_if_url = ""

    def render(self, name: str, value: Any, attrs: Any = None, renderer: Any = None) -> Any:
        editor = super().render(name, value, attrs, renderer)
        if not self.what_if_url:
            return editor
        return format_html(
            '{}<p class="what-if-controls">Try them on the calls of the last '
            '<input name="whatif_days" type="number" min="1" max="90" value="14" '
            'class="vIntegerField" aria-label="Days of past calls to try the rules on"> days: '
            '<button type="submit" formaction="{}" '
            'formtarget="_blank" class="button" name="_what_if">Try these rules</button></p>',
            editor,
            self.what_if_url,
        )


RULES_HELP = (
    "Ordered rules; the first whose condition holds decides. Each is "
    '{"when": CEL condition, "then": "approve" | "require" | "refuse", "approvals": N, '
    '"team": "team name", "confirm": true, "note": "why"}. A condition reads args, signals '
    '(e.g. "external_link" in signals), user.id, user.roles and agent. Example: '
    '[{"when": "args.amount_cents > 50000", "then": "require", "approvals": 2, '
    '"team": "reviewers"}]'
)


class ToolPolicyForm(ChangedMeanwhileRefused, forms.ModelForm):
    # What the page showed is checked on save (``ChangedMeanwhileRefused``): one loaded
    # before someone else's edit wrote it back (a refusal rule removed, a quorum lowered
    # again), as did an imported tool's page loaded before a resync brought the upstream's
    # new description (a new definition version, without a new policy).
    edits = "This tool"

    rules = PrettyJSONField(
        required=False, widget=RulesWidget(attrs={"rows": 10, "cols": 90}), help_text=RULES_HELP
    )

    class Meta:
        model = Tool
        fields = list(POLICY_FIELDS)

    def stored_state(self) -> Any:
        # Every change of a policy field bumps the one, of the definition the other.
        return Tool.objects.values("policy_version", "version").get(pk=self.instance.pk)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "sensitive_fields" in self.fields:
            # Picked from the argument paths the schema declares, never typed as JSON; a
            # stored path the schema no longer has stays listed, so that no save drops it
            # unseen (the policy check then says why it is wrong).
            paths = argument_paths(self.instance.input_schema or {})
            stored = [p for p in (self.instance.sensitive_fields or []) if p not in paths]
            self.fields["sensitive_fields"] = forms.MultipleChoiceField(
                choices=[(p, p) for p in [*paths, *stored]],
                required=False,
                widget=forms.CheckboxSelectMultiple(attrs={"class": "sensitive-paths"}),
                label="Sensitive fields",
                help_text="Argument paths masked everywhere (audit trail, logs, the reviewer "
                "page), on top of those the tool's code declares.",
            )
        if "secret_fields" in self.fields:
            paths = argument_paths(self.instance.input_schema or {})
            stored = [p for p in (self.instance.secret_fields or []) if p not in paths]
            self.fields["secret_fields"] = forms.MultipleChoiceField(
                choices=[(p, p) for p in [*paths, *stored]],
                required=False,
                widget=forms.CheckboxSelectMultiple(attrs={"class": "sensitive-paths"}),
                label="Secret fields",
                help_text="Argument paths reviewers never see, not even in part (an address's "
                "domain, a card's last four), without an audited reveal.",
            )

    def clean_rules(self) -> Any:
        return self.cleaned_data.get("rules") or []

    def clean_secret_fields(self) -> Any:
        return list(self.cleaned_data.get("secret_fields") or [])

    def clean(self) -> dict[str, Any]:
        # The tool's row is locked first (``ChangedMeanwhileRefused``), as ``update_policy``
        # locks it before the teams its rules name.
        cleaned = super().clean()
        if not self.changed_meanwhile:
            # The same rules as update_policy, reported next to the fields they are about.
            self._check(*self._saved_policy(cleaned))
        return cleaned

    def _saved_policy(self, cleaned: dict[str, Any]) -> tuple[Tool, dict[str, Any]]:
        """The tool and its whole policy as the save would leave them. self.instance still
        holds the stored policy here (the form copies onto it later)."""
        return self.instance, {**policy_values(self.instance), **cleaned}

    def _check(self, tool: Tool, values: dict[str, Any]) -> None:
        """``check_policy``'s problems, each next to the field it is about."""
        # The teams the rules name are locked first (the admin's save is one transaction):
        # one being deleted or renamed meanwhile is then gone here, a form error, where
        # the save's own check (``update_policy``) would have found it, a 500.
        rule_teams.lock_teams(teams_named(values.get("rules")))
        try:
            services.check_policy(tool, values)
        except services.PolicyInvalid as exc:
            for field, problems in exc.message_dict.items():
                for problem in problems:
                    self.add_error(field if field in self.fields else None, problem)


class ImportedToolForm(ToolPolicyForm):
    """An imported tool's policy, and the description and risk its admin may correct."""

    class Meta:
        model = Tool
        fields = ["description", "risk", *POLICY_FIELDS]

    def _saved_policy(self, cleaned: dict[str, Any]) -> tuple[Tool, dict[str, Any]]:
        if "risk" not in self.changed_data or "risk" not in cleaned:
            return super()._saved_policy(cleaned)
        # A new risk class resets the policy fields it does not allow (edit_imported_tool),
        # then the fields changed here apply: checked as that policy of the new class, so
        # that what the service would refuse is an error next to its field, not a 500.
        new_risk = cleaned["risk"]
        as_new = copy.copy(self.instance)
        as_new.risk = new_risk
        values = {
            **policy_values(self.instance),
            **policy_for_new_risk(self.instance, new_risk, self.instance.input_schema),
            **{n: cleaned[n] for n in self.changed_data if n in POLICY_FIELDS and n in cleaned},
        }
        return as_new, values


def _permissions_form(base: type[forms.Form]) -> type[forms.Form]:
    """Guardian's per-user / per-team permission form, saving through the audited service."""

    class AuditedObjectPermissionsForm(
        ChangedMeanwhileRefused,
        base,  # type: ignore[misc,valid-type]
    ):
        # What the page showed the subject holding is checked on save
        # (``ChangedMeanwhileRefused``): the page sets exactly what it posts, and one loaded
        # before someone took a grant away gave it back, as its saver's grant.
        changed_by: Any = None
        edits = "Their access to this tool"

        def edited_row(self) -> Tool:
            # The tool's row, as set_permissions locks it (the view is one transaction,
            # ``ToolAdmin.obj_perms_manage_user_view``): no grant changes before the save.
            return self.obj

        def stored_state(self) -> Any:
            return self.get_obj_perms_field_initial()

        def _subject(self) -> dict[str, Any]:
            return {"user": self.user} if hasattr(self, "user") else {"group": self.group}

        def get_obj_perms_field_choices(self) -> list[tuple[str, str]]:
            return [(c, PERMISSION_LABELS[c]) for c in services.OBJECT_PERMISSIONS]

        def get_obj_perms_field_initial(self) -> list[str]:
            held = services.current_permissions(tool=self.obj, **self._subject())
            return sorted(held & set(services.OBJECT_PERMISSIONS))

        def save_obj_perms(self) -> None:
            services.set_permissions(
                tool=self.obj,
                permissions=self.cleaned_data[self.get_obj_perms_field_name()],
                changed_by=self.changed_by,
                **self._subject(),
            )

    return AuditedObjectPermissionsForm


AuditedUserPermissionsForm = _permissions_form(AdminUserObjectPermissionsForm)
AuditedGroupPermissionsForm = _permissions_form(AdminGroupObjectPermissionsForm)


def _superuser_with_ids(request: HttpRequest, *ids: str) -> None:
    """Guardian's pages: superusers only, and ids that are numbers (guardian looks them up
    as they come: anything else was a 500)."""
    if not request.user.is_superuser:
        raise PermissionDenied
    if any(whole_number(raw) is None for raw in ids):
        raise Http404("No such tool, person or team.")


@admin.register(Tool)
class ToolAdmin(ReviewerScopesMixin, GuardedModelAdmin):
    """Tools come from code (``sync_tools``); admins set the policy and the reviewer grants
    (the "Reviewers" page of each tool, and "Reviewer scopes" per person or team).
    Guardian's generic object-permission pages stay for superusers only."""

    # A JSON field's text nested past Python's recursion limit is a form error, not a 500.
    formfield_overrides = {models.JSONField: {"form_class": PrettyJSONField}}

    form = ToolPolicyForm
    change_form_template = "admin/tools_registry/tool/change_form.html"  # type: ignore[misc]
    change_list_template = "admin/tools_registry/tool/change_list.html"
    list_display = [
        "name",
        "risk",
        "enabled",
        "available",
        "approvals_required",
        "timeout_seconds",
        "policy_version",
        "lint_passes",
    ]
    list_filter = ["risk", "enabled", "available"]
    search_fields = ["name", "description"]
    readonly_fields = [
        "name",
        "description",
        "input_schema_pretty",
        "output_schema_pretty",
        "risk",
        "overwrites",
        "idempotent",
        "open_world",
        "version",
        "available",
        "policy_version",
        "lint_report",
        "standing_approvals_list",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (
            "Declared in code",
            {
                "fields": [
                    "name",
                    "risk",
                    "description",
                    "input_schema_pretty",
                    "output_schema_pretty",
                    ("overwrites", "idempotent", "open_world"),
                    "version",
                    "available",
                    "upstream",
                    "upstream_name",
                ]
            },
        ),
        ("Schema lint", {"fields": ["lint_report"]}),
        (
            "Policy",
            {
                "fields": [
                    "enabled",
                    "timeout_seconds",
                    "max_attempts",
                    "approvals_required",
                    "approval_ttl_seconds",
                    "reminder_after_seconds",
                    "escalation_group",
                    "rate_limit_per_agent",
                    "rate_limit_per_user",
                    "breaker_threshold",
                    "breaker_cooldown_seconds",
                    "sensitive_fields",
                    "secret_fields",
                    "policy_version",
                    "shown_state",
                ]
            },
        ),
        ("Rules", {"fields": ["rules", "standing_approvals_list"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    def get_urls(self) -> list[URLPattern]:
        return [*self.scope_urls(), *super().get_urls()]

    def obj_perms_manage_view(self, request: HttpRequest, object_pk: str) -> HttpResponse:
        # Guardian's generic pages show no team grants and take names as free text: tool
        # admins use the Reviewers page; superusers may still open these.
        _superuser_with_ids(request, unquote(object_pk))
        return super().obj_perms_manage_view(request, object_pk)

    def obj_perms_manage_user_view(
        self, request: HttpRequest, object_pk: str, user_id: str
    ) -> HttpResponse:
        _superuser_with_ids(request, object_pk, user_id)
        with transaction.atomic():  # the form's check and its save (AuditedObjectPermissionsForm)
            return super().obj_perms_manage_user_view(request, object_pk, user_id)

    def obj_perms_manage_group_view(
        self, request: HttpRequest, object_pk: str, group_id: str
    ) -> HttpResponse:
        _superuser_with_ids(request, object_pk, group_id)
        with transaction.atomic():  # the form's check and its save (AuditedObjectPermissionsForm)
            return super().obj_perms_manage_group_view(request, object_pk, group_id)

    @admin.display(description="Input schema")
    def input_schema_pretty(self, tool: Tool) -> str:
        return format_html(
            '<pre class="schema-pretty">{}</pre>', json.dumps(tool.input_schema, indent=2)
        )

    @admin.display(description="Output schema")
    def output_schema_pretty(self, tool: Tool) -> str:
        if not tool.output_schema:
            return "—"
        return format_html(
            '<pre class="schema-pretty">{}</pre>', json.dumps(tool.output_schema, indent=2)
        )

    @admin.display(boolean=True, description="Lint")
    def lint_passes(self, tool: Tool) -> bool:
        return not lint_tool(tool)

    @admin.display(description="Lint result")
    def lint_report(self, tool: Tool) -> str:
        problems = lint_tool(tool)
        if not problems:
            return "The definition passes every lint rule."
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li><code>{}</code> at <code>{}</code>: {}</li>",
                ((p.rule, p.path, p.message) for p in problems),
            ),
        )

    @admin.display(description="Standing approvals")
    def standing_approvals_list(self, tool: Tool) -> str:
        """Reviewers' approvals in advance that are live now (the approvals app owns them;
        its admin page lists and revokes every one)."""
        live = (
            tool.standing_approvals.filter(  # type: ignore[attr-defined]
                revoked_at__isnull=True, expires_at__gt=timezone.now(), tool_version=tool.version
            )
            .select_related("agent", "granted_by")
            .order_by("expires_at")
        )
        rows = [
            (
                s.agent.name,
                s.get_match_display(),
                f"{s.uses} of {s.max_uses}" if s.max_uses else str(s.uses),
                s.expires_at.strftime("%Y-%m-%d %H:%M"),
                s.granted_by.get_username(),
            )
            for s in live[:50]
        ]
        listing = (
            reverse("admin:approvals_standingapproval_changelist") + f"?tool__id__exact={tool.pk}"
        )
        if not rows:
            return format_html('None live. <a href="{}">All of them</a>', listing)
        return format_html(
            '<ul>{}</ul><a href="{}">Revoke or see all</a>',
            format_html_join(
                "",
                "<li>{} · {} · used {} · until {} · by {}</li>",
                rows,
            ),
            listing,
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tools are declared in code and created by sync_tools

    def has_delete_permission(self, request: HttpRequest, obj: Tool | None = None) -> bool:
        return False  # disable a tool instead: its calls and audit trail refer to it

    def get_readonly_fields(self, request: HttpRequest, obj: Tool | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.upstream_id is not None:
            # An imported tool's description and risk are the admin's to correct.
            fields = [f for f in fields if f not in ("description", "risk")]
        return [*fields, "upstream", "upstream_name"]

    def get_form(
        self, request: HttpRequest, obj: Any | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is not None and obj.upstream_id is not None:
            kwargs["form"] = ImportedToolForm
        form = super().get_form(request, obj, change, **kwargs)
        if obj is not None and "rules" in form.base_fields:
            # A copy: the declared field (and its widget) is shared by every form class.
            field = copy.deepcopy(form.base_fields["rules"])
            if isinstance(field.widget, RulesWidget):
                field.widget.what_if_url = reverse("policy_what_if", args=[obj.pk])
            form.base_fields["rules"] = field
        return form

    def save_model(
        self, request: HttpRequest, obj: Tool, form: forms.ModelForm, change: bool
    ) -> None:
        edits = {n: form.cleaned_data[n] for n in form.changed_data if n in ("description", "risk")}
        if edits:
            edited = edit_imported_tool(tool=obj, changed_by=request.user, **edits)
            obj.refresh_from_db()
            obj.policy_version = edited.policy_version
        changes = {
            name: form.cleaned_data[name] for name in form.changed_data if name in POLICY_FIELDS
        }
        saved = services.update_policy(tool=obj, changes=changes, changed_by=request.user)
        obj.policy_version = saved.policy_version

    def get_obj_perms_manage_user_form(self, request: HttpRequest) -> type[forms.Form]:
        return type(
            "UserPermissionsForm", (AuditedUserPermissionsForm,), {"changed_by": request.user}
        )

    def get_obj_perms_manage_group_form(self, request: HttpRequest) -> type[forms.Form]:
        return type(
            "GroupPermissionsForm", (AuditedGroupPermissionsForm,), {"changed_by": request.user}
        )

    # --- Agents and tokens ------------------------------------------------------------------


class AgentTokenInline(admin.TabularInline):
    model = AgentToken
    extra = 0
    fields = ["prefix", "label", "created_at", "created_by", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "label", "created_at", "created_by", "last_used_at", "revoked_at"]
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # issued with "Issue a token", which shows the secret once

    def get_queryset(self, request: HttpRequest) -> QuerySet[AgentToken]:
        # Each row names its agent and issuer: with the tokens, not two queries per token.
        return super().get_queryset(request).select_related("agent", "created_by")


class AgentForm(ChangedMeanwhileRefused, forms.ModelForm):
    # What the page showed is checked on save (``ChangedMeanwhileRefused``): one loaded
    # before someone disabled the agent, or took a tool off its allowlist, enabled it again
    # or gave the tool back, as its own edit.
    edits = "This agent"

    # Roles as a person types them; stored as a list.
    assertable_roles = forms.CharField(
        required=False,
        help_text="Comma-separated: the roles this agent may assert for its users "
        "(only when its users' roles are asserted).",
    )

    class Meta:
        model = Agent
        fields = [
            "name",
            "description",
            "owner",
            "allowed_tools",
            "max_rounds_per_session",
            "enabled",
            "user_roles_from",
            "assertable_roles",
            "identity_provider",
            "role_scopes",
            "unscoped_access",
        ]

    def stored_state(self) -> Any:
        agent = Agent.objects.filter(pk=self.instance.pk)
        tools = agent.values_list("allowed_tools", flat=True).exclude(allowed_tools=None)
        return {**agent.values(*AGENT_FIELDS).get(), "allowed_tools": sorted(tools)}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.initial["assertable_roles"] = ", ".join(self.instance.assertable_roles or [])
        # Left out (a form posted by a script), they keep the model's defaults: no roles,
        # and the whole allowlist for every call, as before roles existed.
        for name in ("user_roles_from", "unscoped_access"):
            if name in self.fields:  # not on a page only viewed
                self.fields[name].required = False

    def clean_user_roles_from(self) -> str:
        return self.cleaned_data.get("user_roles_from") or Agent.UserRoles.NONE

    def clean_unscoped_access(self) -> str:
        return self.cleaned_data.get("unscoped_access") or Agent.UnscopedAccess.ALLOWLIST

    def clean_max_rounds_per_session(self) -> int:
        rounds = self.cleaned_data["max_rounds_per_session"]
        if rounds < 1:
            raise forms.ValidationError("An agent needs at least 1 round per session.")
        return rounds

    def clean_assertable_roles(self) -> list[str]:
        text = self.cleaned_data.get("assertable_roles") or ""
        return [role.strip() for role in text.split(",") if role.strip()]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.changed_meanwhile:
            return cleaned
        # The same rules as save_agent, reported next to the fields they are about, on a
        # copy: the form copies the values onto the instance itself later.
        candidate = Agent(
            user_roles_from=cleaned.get("user_roles_from", ""),
            assertable_roles=cleaned.get("assertable_roles", []),
            identity_provider=cleaned.get("identity_provider"),
            role_scopes=cleaned.get("role_scopes") or {},
            unscoped_access=cleaned.get("unscoped_access", ""),
        )
        try:
            services.check_end_users(candidate)
        except services.AgentInvalid as exc:
            for field, problems in exc.message_dict.items():
                for problem in problems:
                    self.add_error(field if field in self.fields else None, problem)
        else:
            cleaned["role_scopes"] = candidate.role_scopes
        return cleaned


class StopForm(forms.Form):
    reason = forms.CharField(
        max_length=MAX_STOP_REASON,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Shown to the agent with every refusal, and to the reviewers of the calls "
        "the stop cancels; kept in the audit trail.",
    )


class ResumeForm(forms.Form):
    note = forms.CharField(
        max_length=MAX_STOP_REASON,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why it may act again (kept in the audit trail).",
    )


class IssueTokenForm(forms.Form):
    label = forms.CharField(max_length=100, required=False, help_text="What the token is for.")


class RotateWebhookSecretForm(forms.Form):
    """Whether the secrets a rotation replaces keep verifying for their grace period, or
    stop now (they leaked)."""

    GRACE, NOW = "grace", "now"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The label says how long the grace period is: a setting, read per request.
        grace = settings.WEBHOOK_SECRET_GRACE_SECONDS
        now = timezone.now()
        lasting = timeuntil(now + timedelta(seconds=grace), now)
        keeps = (
            f"webhooks carry its signature too for {lasting}, and older secrets still in "
            f"their grace period keep theirs (at most {services.MAX_OLD_WEBHOOK_SECRETS} old "
            "secrets), so the agent switches without missing a webhook"
            if grace > 0
            else "WEBHOOK_SECRET_GRACE_SECONDS is 0: it stops verifying now all the same"
        )
        self.fields["old_secrets"] = forms.ChoiceField(
            label="The old secret",
            widget=forms.RadioSelect,
            initial=self.GRACE,
            choices=[
                (self.GRACE, f"Keep it valid for the grace period (routine): {keeps}."),
                (
                    self.NOW,
                    "Expire it now (it leaked): it, and every older secret still in its "
                    "grace period, stop verifying at once; webhooks fail to verify until the "
                    "agent has the new secret.",
                ),
            ],
        )


@admin.register(Agent)
class AgentAdmin(UniqueNameRaceShown, SecretsNotLookedUp, admin.ModelAdmin):
    """Agents: allowlist, limits, end users and their roles' scopes, tokens; and the stop
    button. Whoever holds the "stop agents" permission sees agents and may stop and resume
    them, without being able to change anything else."""

    # A JSON field's text nested past Python's recursion limit is a form error, not a 500.
    formfield_overrides = {models.JSONField: {"form_class": PrettyJSONField}}
    # Whoever may see the list (or only stop agents) never learns the webhook secrets.
    secret_fields = ("webhook_secret", "previous_webhook_secrets")

    form = AgentForm
    list_display = ["name", "owner", "enabled", "state", "max_rounds_per_session", "created_at"]
    list_filter = ["enabled", ("stopped_at", admin.EmptyFieldListFilter)]
    search_fields = ["name"]
    filter_horizontal = ["allowed_tools"]
    inlines = [AgentTokenInline]
    readonly_fields = ["stop_state", "scope_table"]
    actions = ["stop_selected"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "name",
                    "description",
                    "owner",
                    "enabled",
                    "stop_state",
                    "max_rounds_per_session",
                    "allowed_tools",
                    "shown_state",
                ]
            },
        ),
        (
            "End users and their roles",
            {
                "description": "Whom the agent's calls are for, and what each of their roles "
                "may use of the allowlist (docs/end-users.md).",
                "fields": [
                    "user_roles_from",
                    "assertable_roles",
                    "identity_provider",
                    "role_scopes",
                    "unscoped_access",
                    "scope_table",
                ],
            },
        ),
    ]

    def has_delete_permission(self, request: HttpRequest, obj: Agent | None = None) -> bool:
        return False  # disable an agent instead: its calls and audit trail refer to it

    def has_view_permission(self, request: HttpRequest, obj: Agent | None = None) -> bool:
        return super().has_view_permission(request, obj) or _may_stop(request)

    def has_stop_permission(self, request: HttpRequest) -> bool:
        return _may_stop(request)

    @admin.display(description="State")
    def state(self, agent: Agent) -> str:
        return "stopped" if agent.stopped_at else "running"

    @admin.display(description="Stopped")
    def stop_state(self, agent: Agent) -> str:
        if agent.stopped_at is None:
            return "No: its tokens are accepted."
        return format_html(
            "Since {} by {}: {}",
            agent.stopped_at.strftime("%Y-%m-%d %H:%M UTC"),
            agent.stopped_by or "an operator",
            agent.stop_reason,
        )

    @admin.display(description="What each role may use")
    def scope_table(self, agent: Agent) -> str:
        """The scopes applied to today's allowlist, as the agent's users get them."""
        if agent.pk is None:
            return "Save the agent first."
        tools = list(agent.allowed_tools.order_by("name"))
        rows = [
            (role, ", ".join(t.name for t in tools if scope.covers(t)) or "nothing")
            for role, scope in role_scopes.scopes_of(agent).items()
        ]
        unscoped = [t for t in tools if role_scopes.permits(agent, role_scopes.NOBODY, t)]
        rows.append(
            ("no user, or no scoped role", ", ".join(t.name for t in unscoped) or "nothing")
        )
        table = format_html(
            "<table><tbody>{}</tbody></table>",
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
        )
        acting = [t.name for t in unscoped if t.risk != Risk.READ]
        if agent.user_roles_from == Agent.UserRoles.VERIFIED and acting:
            # A call that leaves the user's token out names no user: the agent, not the
            # provider, then decides what the call may do.
            return format_html(
                '{}<p class="errornote">A call that leaves out the user\'s token gets the row '
                "above, which may act ({}): set <em>Unscoped access</em> to read tools or nothing, "
                "so that only a verified role opens these.</p>",
                table,
                ", ".join(acting),
            )
        return table

    def save_model(
        self, request: HttpRequest, obj: Agent, form: forms.ModelForm, change: bool
    ) -> None:
        services.save_agent(
            agent=obj, allowed_tools=form.cleaned_data.get("allowed_tools"), changed_by=request.user
        )

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool
    ) -> None:
        # save_agent already stored (and audited) the allowlist; only the inlines are left.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def get_urls(self) -> list[URLPattern]:
        issue = path(
            "<path:object_id>/issue-token/",
            self.admin_site.admin_view(self.issue_token_view),
            name="tools_registry_agent_issue_token",
        )
        rotate = path(
            "<path:object_id>/rotate-webhook-secret/",
            self.admin_site.admin_view(self.rotate_webhook_secret_view),
            name="tools_registry_agent_rotate_webhook_secret",
        )
        stop = path(
            "<path:object_id>/stop/",
            self.admin_site.admin_view(self.stop_view),
            name="tools_registry_agent_stop",
        )
        resume = path(
            "<path:object_id>/resume/",
            self.admin_site.admin_view(self.resume_view),
            name="tools_registry_agent_resume",
        )
        return [issue, rotate, stop, resume, *super().get_urls()]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = {**(extra_context or {}), "may_stop": _may_stop(request)}
        return super().change_view(request, object_id, form_url, context)

    def _agent_page(self, request: HttpRequest, object_id: str, title: str) -> dict[str, Any]:
        agent = self.get_object(request, unquote(object_id))
        if agent is None:
            raise Http404("No such agent.")
        if not _may_stop(request):
            raise PermissionDenied
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": agent,
            "title": f"{title} {agent.name}",
        }

    def stop_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Stop the agent, with a reason (POST); the page says what a stop does."""
        context = self._agent_page(request, object_id, "Stop")
        agent: Agent = context["original"]
        form = StopForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            self._stop(request, [agent], form.cleaned_data["reason"])
            return HttpResponseRedirect(
                reverse("admin:tools_registry_agent_change", args=[agent.pk])
            )
        return TemplateResponse(
            request,
            "admin/tools_registry/agent/stop.html",
            {**context, "form": form, "agents": [agent], "waiting": _waiting([agent])},
        )

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        context = self._agent_page(request, object_id, "Resume")
        agent: Agent = context["original"]
        form = ResumeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            if services.resume_agent(
                agent=agent, resumed_by=request.user, note=form.cleaned_data["note"]
            ):
                messages.success(request, f"{agent.name} runs again; its tokens are accepted.")
            else:
                messages.info(request, f"{agent.name} was not stopped.")
            return HttpResponseRedirect(
                reverse("admin:tools_registry_agent_change", args=[agent.pk])
            )
        return TemplateResponse(
            request, "admin/tools_registry/agent/resume.html", {**context, "form": form}
        )

    @admin.action(description="Stop the selected agents…", permissions=["stop"])
    def stop_selected(self, request: HttpRequest, queryset: QuerySet[Agent]) -> Any:
        """An intermediate page asks for the reason, then stops each selected agent."""
        agents = list(queryset.order_by("name"))
        form = StopForm(request.POST if "reason" in request.POST else None)
        if form.is_bound and form.is_valid():
            self._stop(request, agents, form.cleaned_data["reason"])
            return None
        return TemplateResponse(
            request,
            "admin/tools_registry/agent/stop.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "Stop agents",
                "form": form,
                "agents": agents,
                "waiting": _waiting(agents),
                "action": True,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )

    def _stop(self, request: HttpRequest, agents: list[Agent], reason: str) -> None:
        for agent in agents:
            stop = services.stop_agent(agent=agent, reason=reason, stopped_by=request.user)
            if stop.already_stopped:
                messages.info(request, f"{agent.name} was already stopped.")
            else:
                messages.success(
                    request,
                    f"Stopped {agent.name}: its tokens are refused, and "
                    f"{len(stop.cancelled)} call(s) waiting for a decision were cancelled.",
                )

    def rotate_webhook_secret_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Rotate the agent's webhook secret (POST) and show the new one on that response
        only, like a token: the agent's operator copies it into the agent's configuration.
        The admin chooses whether the old secrets keep their grace period or end now."""
        agent = self.get_object(request, unquote(object_id))
        if agent is None:
            raise Http404("No such agent.")
        if not self.has_change_permission(request, agent):
            raise PermissionDenied
        form = RotateWebhookSecretForm(request.POST if request.method == "POST" else None)
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": agent,
            "title": f"Webhook secret of {agent.name}",
            "form": form,
            "old_secrets_until": services.old_secrets_valid_until(agent),
            "max_old_secrets": services.MAX_OLD_WEBHOOK_SECRETS,
        }
        if request.method == "POST" and form.is_valid():
            context["rotation"] = services.rotate_webhook_secret(
                agent=agent,
                rotated_by=request.user,
                expire_old_now=form.cleaned_data["old_secrets"] == form.NOW,
            )
        response = TemplateResponse(
            request, "admin/tools_registry/agent/webhook_secret.html", context
        )
        add_never_cache_headers(response)
        return response

    def issue_token_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Issue a token and show it on this one response; it is never stored or shown again.

        The plaintext goes straight into the page, not into a message: messages are kept
        in a cookie or the session table, which would write the secret down.
        """
        agent = self.get_object(request, unquote(object_id))
        if agent is None:
            raise Http404("No such agent.")
        if not request.user.has_perm("tools_registry.add_agenttoken"):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": agent,
            "title": f"Issue a token for {agent.name}",
        }
        form = IssueTokenForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            token, plaintext = services.issue_token(
                agent=agent, created_by=request.user, label=form.cleaned_data["label"]
            )
            response = TemplateResponse(
                request,
                "admin/tools_registry/agent/token_issued.html",
                {**context, "token": token, "plaintext": plaintext},
            )
            add_never_cache_headers(response)
            return response
        return TemplateResponse(
            request, "admin/tools_registry/agent/issue_token.html", {**context, "form": form}
        )


@admin.action(description="Revoke the selected tokens", permissions=["change"])
def revoke_tokens(
    admin_: AgentTokenAdmin, request: HttpRequest, queryset: QuerySet[AgentToken]
) -> None:
    revoked = 0
    for token in queryset.filter(revoked_at__isnull=True):
        services.revoke_token(token=token, revoked_by=request.user)
        revoked += 1
    admin_.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)


@admin.register(AgentToken)
class AgentTokenAdmin(SecretsNotLookedUp, admin.ModelAdmin):
    """Tokens are listed and revoked here; they are never edited or deleted (history)."""

    list_display = [
        "prefix",
        "agent",
        "label",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "agent"]
    search_fields = ["prefix", "label", "agent__name"]
    list_select_related = ["agent", "created_by"]
    readonly_fields = [
        "agent",
        "label",
        "prefix",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
    ]
    exclude = ["secret_hash"]
    secret_fields = ("secret_hash",)
    actions = [revoke_tokens]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AgentToken | None = None) -> bool:
        # Allowed on the list (for the revoke action), never on one token: nothing is editable.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: AgentToken | None = None) -> bool:
        return False


def _may_stop(request: HttpRequest) -> bool:
    return bool(request.user.has_perm("tools_registry.stop_agent"))


def _waiting(agents: list[Agent]) -> int:
    """How many calls of ``agents`` wait for a decision: what a stop would cancel. (The
    calls' model is the approvals app's, above this one: reached by its relation's name,
    not imported.)"""
    # One query for all of them (the stop action lists as many agents as were selected).
    return Agent.objects.filter(pk__in=[a.pk for a in agents], calls__status="pending").count()


# --- Identity providers -------------------------------------------------------------------


class IdentityProviderForm(ChangedMeanwhileRefused, forms.ModelForm):
    # What the page showed is checked on save (``ChangedMeanwhileRefused``): one loaded
    # before someone moved the issuer or the keys away from a compromised tenant moved them
    # back, as its own edit.
    edits = "This identity provider"

    algorithms = forms.MultipleChoiceField(
        choices=[(a, a) for a in TOKEN_ALGORITHMS],
        widget=forms.CheckboxSelectMultiple,
        help_text="Public-key algorithms only: none and the HS family are never accepted.",
    )

    class Meta:
        model = IdentityProvider
        fields = list(IDENTITY_PROVIDER_SETTINGS)  # those its save audits and checks

    def stored_state(self) -> Any:
        fields = IDENTITY_PROVIDER_SETTINGS
        return IdentityProvider.objects.values(*fields).get(pk=self.instance.pk)


@admin.register(IdentityProvider)
class IdentityProviderAdmin(UniqueNameRaceShown, admin.ModelAdmin):
    """The identity providers whose user tokens agents forward (verified roles)."""

    # A JSON field's text nested past Python's recursion limit is a form error, not a 500.
    formfield_overrides = {models.JSONField: {"form_class": PrettyJSONField}}

    form = IdentityProviderForm
    list_display = ["name", "issuer", "audience", "jwks_url"]
    search_fields = ["name", "issuer"]

    def has_delete_permission(
        self, request: HttpRequest, obj: IdentityProvider | None = None
    ) -> bool:
        return False  # agents refer to it; point them at another provider instead

    def save_model(
        self, request: HttpRequest, obj: IdentityProvider, form: forms.ModelForm, change: bool
    ) -> None:
        services.save_identity_provider(provider=obj, changed_by=request.user)


# --- Upstreams ------------------------------------------------------------------------------


class WriteOnlyTextarea(forms.Textarea):
    """A box whose value is never written back into the page (as ``PasswordInput``): the
    form shown again for an error in another field held the headers just typed."""

    def format_value(self, value: Any) -> None:
        return None


class UpstreamForm(ChangedMeanwhileRefused, forms.ModelForm):
    # What the page showed is checked on save (``ChangedMeanwhileRefused``): one loaded
    # before someone moved the URL off a compromised host, or switched the upstream off,
    # moved it back or switched it on again. The headers are never shown, only their names.
    edits = "This upstream"

    headers = forms.CharField(
        required=False,
        widget=WriteOnlyTextarea(attrs={"rows": 3, "autocomplete": "off"}),
        help_text="One 'Name: value' per line, for example 'Authorization: Bearer ...'. "
        "Stored encrypted and never shown again; leave empty to keep the current ones.",
    )

    class Meta:
        model = Upstream
        fields = [
            "name",
            "kind",
            "url",
            "base_url",
            "timeout_seconds",
            "idempotency_header",
            "rerunnable",
            "enabled",
        ]

    def stored_state(self) -> Any:
        fields = [*UPSTREAM_SETTINGS, "enabled", "header_names"]
        return Upstream.objects.values(*fields).get(pk=self.instance.pk)

    def clean_headers(self) -> list[tuple[str, str]] | None:
        text = self.cleaned_data.get("headers") or ""
        if not text.strip():
            return None
        try:
            return parse_header_lines(text.splitlines())
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(Upstream)
class UpstreamAdmin(UniqueNameRaceShown, SecretsNotLookedUp, admin.ModelAdmin):
    """Systems whose tools are imported: register, import again, switch off, delete one
    without tools (audited). Header values are write-only: only their names are shown."""

    form = UpstreamForm
    # The URLs too: one stored with a password before they were refused is shown as dots
    # (``shown_instead``), and ?url__startswith=... would spell it out a character at a time
    # from the list's count. Nobody needs to filter the list on a URL.
    secret_fields = ("headers_encrypted", "url", "base_url")
    list_display = [
        "name",
        "kind",
        "shown_url",
        "enabled",
        "tool_count",
        "last_synced_at",
        "sync_problem",
    ]
    readonly_fields = ["current_headers", "last_synced_at", "last_sync_error", "tools_link"]
    actions = ["import_again"]
    # Shown instead of the URLs to whoever may only view upstreams: one stored before a
    # password in it was refused still holds it (an admin who may change it sees it, to
    # take it out).
    shown_instead = {"url": "shown_url", "base_url": "shown_base_url"}

    def get_readonly_fields(self, request: HttpRequest, obj: Upstream | None = None) -> list[str]:
        fields = list(self.readonly_fields)
        return [*fields, "name", "kind"] if obj is not None else fields

    def get_fields(self, request: HttpRequest, obj: Upstream | None = None) -> Any:
        fields = super().get_fields(request, obj)
        if obj is not None and not self.has_change_permission(request, obj):
            return [self.shown_instead.get(f, f) if isinstance(f, str) else f for f in fields]
        return fields

    @admin.display(description="URL", ordering="url")
    def shown_url(self, upstream: Upstream) -> str:
        return without_password(upstream.url)

    @admin.display(description="Base URL")
    def shown_base_url(self, upstream: Upstream) -> str:
        return without_password(upstream.base_url)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Upstream]:
        return super().get_queryset(request).annotate(tool_total=Count("tools"))

    @admin.display(description="Tools")
    def tool_count(self, upstream: Upstream) -> int:
        return getattr(upstream, "tool_total", 0)

    @admin.display(description="Last sync")
    def sync_problem(self, upstream: Upstream) -> str:
        return upstream.last_sync_error[:80] if upstream.last_sync_error else "ok"

    @admin.display(description="Headers sent")
    def current_headers(self, upstream: Upstream) -> str:
        names = upstream.header_names or []
        return ", ".join(f"{name}: ••••••" for name in names) or "none"

    @admin.display(description="Imported tools")
    def tools_link(self, upstream: Upstream) -> str:
        url = (
            reverse("admin:tools_registry_tool_changelist") + f"?upstream__id__exact={upstream.pk}"
        )
        return format_html('<a href="{}">{} tools</a>', url, upstream.tools.count())

    def save_model(
        self, request: HttpRequest, obj: Upstream, form: forms.ModelForm, change: bool
    ) -> None:
        headers = form.cleaned_data.get("headers")
        if not change:
            created = register_upstream(
                name=obj.name,
                kind=obj.kind,
                url=obj.url,
                base_url=obj.base_url,
                headers=headers or [],
                timeout_seconds=obj.timeout_seconds,
                idempotency_header=obj.idempotency_header,
                rerunnable=obj.rerunnable,
                enabled=obj.enabled,
                created_by=request.user,
            )
            obj.pk = created.pk
            if created.enabled:  # one added switched off is read when switched on
                self._sync(request, created)
            return
        settings_changed = [n for n in form.changed_data if n in UPSTREAM_SETTINGS]
        if settings_changed or headers is not None:
            updated = update_upstream(
                upstream=obj,
                changes={n: form.cleaned_data[n] for n in settings_changed},
                headers=headers,
                changed_by=request.user,
            )
            if headers is None and obj.header_names and not updated.header_names:
                messages.warning(
                    request,
                    f"{obj.name}: its headers were not sent to the new host; enter them again.",
                )
        if "enabled" in form.changed_data:
            set_upstream_enabled(upstream=obj, enabled=obj.enabled, changed_by=request.user)
            if obj.enabled:
                self._sync(request, Upstream.objects.get(pk=obj.pk))

    def delete_model(self, request: HttpRequest, obj: Upstream) -> None:
        delete_upstream(upstream=obj, deleted_by=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        for upstream in queryset:
            delete_upstream(upstream=upstream, deleted_by=request.user)

    # The page and the action check for tools before the deletion, which then waits for the
    # lock of a sync importing some (``delete_upstream``) and meets them: said, not a 500.
    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except ProtectedError as error:
            return self._kept(request, error)

    def response_action(self, request: HttpRequest, queryset: Any, *args: Any, **kw: Any) -> Any:
        try:
            return super().response_action(request, queryset, *args, **kw)
        except ProtectedError as error:
            return self._kept(request, error)

    def _kept(self, request: HttpRequest, error: ProtectedError) -> HttpResponse:
        kept = {
            t.upstream_id for t in error.protected_objects if isinstance(t, Tool) and t.upstream_id
        }
        for name in Upstream.objects.filter(pk__in=kept).values_list("name", flat=True):
            messages.error(
                request,
                f"{name} has tools now (imported meanwhile), so it was not deleted: only an "
                "upstream without tools can be.",
            )
        return HttpResponseRedirect(request.get_full_path())

    @admin.action(description="Import their tools again", permissions=["change"])
    def import_again(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        for upstream in queryset:
            self._sync(request, upstream)

    def _sync(self, request: HttpRequest, upstream: Upstream) -> None:
        try:
            report = sync_upstream(upstream=upstream, actor=request.user)
        except ImportFailed as failure:
            messages.error(request, f"{upstream.name}: {failure.message}")
            return
        messages.success(
            request,
            f"{upstream.name}: imported {len(report.imported)} (disabled until you enable "
            f"them), changed {len(report.changed)}, removed {len(report.removed)}.",
        )
        for problem in report.skipped:
            messages.warning(request, f"{upstream.name}: not imported: {problem}")
        for problem in report.disabled:
            messages.warning(
                request, f"{upstream.name}: disabled, its policy no longer fits: {problem}"
            )
