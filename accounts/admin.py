"""People in the admin: Django's user admin, audited where it widens who may review what."""

from __future__ import annotations

from typing import Any

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.forms import (
    AdminUserCreationForm,
    ReadOnlyPasswordHashField,
    ReadOnlyPasswordHashWidget,
    UserChangeForm,
)
from django.contrib.auth.models import Group, Permission, User
from django.contrib.auth.templatetags.auth import render_password_as_hash
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django_otp.plugins.otp_totp.admin import TOTPDeviceAdmin
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import sessions
from accounts.forms import PasswordSetByAdminForm
from accounts.models import SsoIdentity
from audit.log import record
from audit.receivers import attempted_name
from core.admin_lookups import SecretsNotLookedUp
from core.admin_saves import ChangedMeanwhileRefused, UniqueNameRaceShown
from tools_registry import rule_teams
from tools_registry.models import ToolGroupObjectPermission, ToolUserObjectPermission
from tools_registry.services.grants import (
    access_of,
    hold_reviews_of,
    permission_names,
    record_access_change,
    record_deletion,
    record_team_change,
    record_team_creation,
)

admin.site.unregister(User)
admin.site.unregister(Group)
admin.site.unregister(AccessAttempt)
admin.site.unregister(TOTPDevice)


class SsoIdentityInline(admin.StackedInline):
    """Whom the account belongs to at the single sign-on provider, shown only: a link is
    made at a first sign-in or on purpose with ``manage.py link_sso`` (audited)."""

    model = SsoIdentity
    fields = readonly_fields = ("subject", "linked_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeletionAudited:
    """A person or a team deleted in the admin (one, or a list's selection) is audited with
    the grants and teams or members that go with them (``record_deletion``)."""

    deleted_as: str  # the keyword record_deletion takes them by: "user" or "group"

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        record_deletion(deleted_by=request.user, **{self.deleted_as: obj})
        super().delete_model(request, obj)  # type: ignore[misc]

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        # One transaction (the list's action runs in none of its own): the tools
        # ``record_deletion`` locks stay locked until those who reviewed them are gone.
        with transaction.atomic():
            # All of them first, in one order of ids: one person (team) at a time, each in
            # id order, held one's tools while waiting for another's of a lower id, which a
            # deactivation or another deletion could hold while waiting for the first.
            hold_reviews_of(**{f"{self.deleted_as}s": list(queryset)})
            for each in queryset:
                record_deletion(deleted_by=request.user, **{self.deleted_as: each})
            super().delete_queryset(request, queryset)  # type: ignore[misc]


def held_permissions(editor: Any) -> QuerySet[Permission]:
    """The model-wide permissions a person holds, their own and their teams'."""
    return Permission.objects.filter(Q(user=editor) | Q(group__user=editor)).distinct()


def held_tool_grant(editor: Any) -> Q:
    """A tool grant row (a person's or a team's) that the editor holds too, directly or
    through a team."""
    same = {"permission": OuterRef("permission"), "content_object": OuterRef("content_object")}
    return Q(Exists(ToolUserObjectPermission.objects.filter(user=editor, **same))) | Q(
        Exists(ToolGroupObjectPermission.objects.filter(group__user=editor, **same))
    )


def holds_more(*, editor: Any, person: Any = None, group: Group | None = None) -> bool:
    """Whether a person (or a team) holds what the editor does not: a superuser status, a
    model-wide permission, or a grant on a tool (review, reveal). Whoever changes them
    could take it (join the team; with their password known, delete their app and decide
    calls as them), so only someone holding all of it may."""
    if editor.is_superuser:
        return False
    if person is not None and person.is_superuser:
        return True
    holders = Q(group=group) if group is not None else Q(user=person) | Q(group__user=person)
    if Permission.objects.filter(holders).exclude(pk__in=held_permissions(editor)).exists():
        return True
    held = held_tool_grant(editor)
    team_grants = ToolGroupObjectPermission.objects.exclude(held)
    if group is not None:
        return team_grants.filter(group=group).exists()
    return (
        ToolUserObjectPermission.objects.filter(user=person).exclude(held).exists()
        or team_grants.filter(group__user=person).exists()
    )


class HoldingNoMore:
    """Only someone who holds all a person (or a team) holds may change or delete them:
    whoever changes them could take it (join the team, delete the app that guards them)."""

    guarded_as: str  # "person" or "group", as ``holds_more`` names it

    def guarded(self, obj: Any) -> Any:
        """The person or team ``obj`` gives access as (an authenticator app: its owner)."""
        return obj

    def _holds_more(self, request: HttpRequest, obj: Any) -> bool:
        return obj is not None and holds_more(
            editor=request.user, **{self.guarded_as: self.guarded(obj)}
        )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if self._holds_more(request, obj):
            return False
        return super().has_change_permission(request, obj)  # type: ignore[misc]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if self._holds_more(request, obj):
            return False
        return super().has_delete_permission(request, obj)  # type: ignore[misc]


# Only a superuser chooses a password someone else signs in with. Whoever chooses it signs
# in as the account, its authenticator app included (the first sign-in sets one up), and
# an account may be given more after its password was set: made by a tool admin, granted
# a tool by them (or given their permission to change tools, to grant its maker), it let
# one person decide calls alone, and meet a quorum of two. Nothing later tells the maker
# from the owner: a first sign-in, or a change of the password, is the maker's as well.
SET_ONLY_BY_SUPERUSERS = (
    "Only a superuser sets someone's password: whoever chooses it can sign in as them."
)


class AccountWithoutPasswordForm(AdminUserCreationForm):
    """The add form of an admin who is not a superuser: the account is made without a
    password (``SET_ONLY_BY_SUPERUSERS``). Its owner signs in through single sign-on,
    or a superuser sets its first password. A password posted anyway counts for nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("usable_password", "password1", "password2"):
            del self.fields[name]

    def validate_passwords(self, *args: Any, **kwargs: Any) -> None:
        self.cleaned_data["set_usable_password"] = False


class PasswordShownWidget(ReadOnlyPasswordHashWidget):
    """Whether and how the account has a password, without the button to set it."""

    def render(self, name: str, value: Any, attrs: Any = None, renderer: Any = None) -> Any:
        return format_html("<div>{}</div>", render_password_as_hash(value))


class PersonForm(ChangedMeanwhileRefused, UserChangeForm):
    """A person's change form, saving nothing if the person was changed since the page was
    shown (``ChangedMeanwhileRefused``): one loaded before someone deactivated the account,
    took it out of a team or took a permission away gave it back, as its saver's change."""

    edits = "This person"

    def stored_state(self) -> Any:
        person = User.objects.filter(pk=self.instance.pk)
        # Not when they last signed in: that changes at each sign-in, and decides nothing.
        # And the password (digested, as all of it), which the page never sets: the admin
        # saves the whole row as read before the lock, so one set meanwhile was set back.
        fields = ["username", "first_name", "last_name", "email", "date_joined", "password"]
        return {
            **person.values(*fields, "is_active", "is_staff", "is_superuser").get(),
            "groups": sorted(person.values_list("groups", flat=True).exclude(groups=None)),
            "permissions": sorted(
                person.values_list("user_permissions", flat=True).exclude(user_permissions=None)
            ),
        }


class ChangeFormWithoutPassword(PersonForm):
    """The change form of an admin who is not a superuser: the password is shown, never set
    from here (``SET_ONLY_BY_SUPERUSERS``)."""

    password = ReadOnlyPasswordHashField(label="Password", widget=PasswordShownWidget)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["password"].help_text = SET_ONLY_BY_SUPERUSERS


@admin.register(User)
class AuditedUserAdmin(UniqueNameRaceShown, HoldingNoMore, DeletionAudited, UserAdmin):
    """Django's user admin, auditing what changes whose calls a person may review: joining
    a team gives its grants, a superuser reviews every tool, and a model-wide permission
    (changing tools) lets one grant them."""

    inlines = (SsoIdentityInline,)
    deleted_as = "user"
    form = PersonForm
    change_password_form = PasswordSetByAdminForm  # the password alone is written

    # Someone who is not a superuser grants only what they hold (a compliance rule: nobody
    # grants what they do not hold), never to themselves, never changes or deletes a person
    # holding more than they do (``HoldingNoMore``), and sets nobody's password
    # (``SET_ONLY_BY_SUPERUSERS``).
    guarded_as = "person"

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None and not request.user.is_superuser:
            return (
                (
                    None,
                    {
                        "classes": ("wide",),
                        "fields": ("username",),
                        "description": "The account is made without a password: its owner "
                        "signs in through single sign-on, or a superuser sets its password. "
                        + SET_ONLY_BY_SUPERUSERS,
                    },
                ),
            )
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        # The digest of what the page shows travels in it (``PersonForm``).
        (name, first), *rest = fieldsets
        return ((name, {**first, "fields": (*first["fields"], "shown_state")}), *rest)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if not request.user.is_superuser:
            kwargs["form"] = (
                AccountWithoutPasswordForm if obj is None else ChangeFormWithoutPassword
            )
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # When they last signed in is shown, never posted: a page opened before their last
        # sign-in wrote the time of the one before back (left out of ``PersonForm``'s digest,
        # which would refuse the page at each sign-in), misleading whoever looks for dormant
        # accounts.
        fields = [*super().get_readonly_fields(request, obj), "last_login"]
        if not request.user.is_superuser:
            fields.append("is_superuser")
            if obj is not None and obj.pk == request.user.pk:
                # Nor their own name or address: separation of duties matches the person an
                # agent acts for by them.
                fields += ["username", "email", "groups", "user_permissions"]
        return fields

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if not request.user.is_superuser:
            held = held_permissions(request.user)
            if db_field.name == "user_permissions":
                kwargs["queryset"] = Permission.objects.filter(pk__in=held)
            elif db_field.name == "groups":
                kwargs["queryset"] = Group.objects.exclude(
                    permissions__in=Permission.objects.exclude(pk__in=held)
                ).exclude(
                    # Nor a team with a tool grant they lack: whoever puts an account they
                    # can sign in as in it (its password known) decides those calls.
                    pk__in=ToolGroupObjectPermission.objects.exclude(
                        held_tool_grant(request.user)
                    ).values("group")
                )
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change and {"is_active", "is_superuser", "groups"} & set(form.changed_data):
            # Before the account's row and teams are written (in the page's transaction):
            # deactivated, out of a team or no longer a superuser, the person's approvals
            # stop counting, so a verdict or the quorum sweep counting them finishes first.
            # Only then: the lock holds up new calls of those tools until the save commits.
            hold_reviews_of(users=[obj])
        super().save_model(request, obj, form, change)
        if change and "is_active" in form.changed_data and not obj.is_active:
            # Signed out for good: made active again, they sign in again (``sessions``).
            sessions.sign_out_everywhere(obj)
        if not change:
            # Whoever chose the password of the account they made (only a superuser may)
            # can sign in as it, as whoever sets one later (``auth.password_set``).
            record(
                action="auth.user_created",
                actor=request.user,
                # In the outcome: a "password" key of the data is masked whatever it holds.
                outcome="with_password" if obj.has_usable_password() else "without_password",
                data={"user": obj.get_username()},
                people=("user",),
            )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        user = form.instance
        # The form's initial values are what the person had before this save; a field the
        # form leaves out (read-only to this admin, or not on the add form) is as it was.
        initial = form.initial if change else {}
        kept = access_of(user, groups=user.groups.all(), permissions=user.user_permissions.all())
        before = {
            "groups": sorted(g.name for g in initial["groups"])
            if "groups" in initial
            else kept["groups"],
            "permissions": permission_names(initial["user_permissions"])
            if "user_permissions" in initial
            else kept["permissions"],
            **{
                key: initial.get(key, kept[key])
                for key in ("username", "email", "is_active", "is_staff", "is_superuser")
            },
        }
        super().save_related(request, form, formsets, change)
        record_access_change(user=user, before=before, changed_by=request.user)

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        """Django's page for setting someone's password: whoever sets it can sign in as
        them, so it is audited (who, for whom; never the password).

        Not one's own: that page asks for no old password, so a stolen admin session (of
        anyone who may change people) set a password of its own choosing, and the owner
        was locked out. One's own is changed on the admin's "Change password" page, whose
        old password is checked, and counted, as a sign-in. Someone else's only by a
        superuser (``SET_ONLY_BY_SUPERUSERS``)."""
        person = self.get_object(request, unquote(id))
        if person is not None and person.pk == request.user.pk:
            return HttpResponseRedirect(reverse("admin:password_change"))
        if not request.user.is_superuser:
            raise PermissionDenied(SET_ONLY_BY_SUPERUSERS)
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and response.status_code == 302:
            person = self.get_object(request, id)
            record(
                action="auth.password_set",
                actor=request.user,
                outcome="set_by_admin",
                data={"user": person.get_username() if person else id},
                people=("user",),
            )
        return response


class TeamForm(ChangedMeanwhileRefused, forms.ModelForm):
    """A team's form: a team tools' policy rules name keeps its name until they no longer
    do (``rule_teams``): renamed, it would leave them asking for a team nobody is in. Nor
    does it save if the team was changed since the page was shown (``ChangedMeanwhileRefused``):
    one loaded before someone took a permission away from the team gave it back."""

    edits = "This team"

    def stored_state(self) -> Any:
        team = Group.objects.filter(pk=self.instance.pk)
        permissions = team.values_list("permissions", flat=True).exclude(permissions=None)
        return {
            "name": team.values_list("name", flat=True).get(),
            "permissions": sorted(permissions),
        }

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"]
        before = self.instance.name if self.instance.pk else ""
        if before and name != before:
            rule_teams.lock_teams([before])  # rules saved meanwhile naming it are seen
            if tools := rule_teams.tools_naming([before]).get(before):
                raise forms.ValidationError(f"Not renamed. {rule_teams.still_named(before, tools)}")
        return name


@admin.register(Group)
class AuditedGroupAdmin(UniqueNameRaceShown, HoldingNoMore, DeletionAudited, GroupAdmin):
    """Django's team admin, auditing a team's deletion (its members lose its grants with
    it), and a rename or a change of its model-wide permissions, with who made it. A team
    tools' policy rules name is neither deleted nor renamed (``rule_teams``)."""

    form = TeamForm
    deleted_as = "group"

    # A team's permissions are its members': someone who is not a superuser gives a team
    # only what they hold, and changes no team holding more (``HoldingNoMore``).
    guarded_as = "group"

    def formfield_for_manytomany(
        self, db_field: Any, request: HttpRequest | None = None, **kwargs: Any
    ) -> Any:
        if db_field.name == "permissions" and request and not request.user.is_superuser:
            kwargs["queryset"] = Permission.objects.filter(pk__in=held_permissions(request.user))
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """Django's, with each tool whose policy rules name a team to delete as protected:
        the deletion page (one team, or the list's selection) refuses and says why."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        teams = [team.name for team in objs]
        if request.method == "POST":
            # About to delete (in a transaction: ``delete_view``, ``changelist_view``): the
            # tools the members review first (``record_deletion`` does again), as a policy
            # change locks its tool before the teams its rules name: the two never wait for
            # each other. Then the teams, so rules saved meanwhile naming them are seen here.
            hold_reviews_of(groups=objs)
            rule_teams.lock_teams(teams)
        for team, tools in rule_teams.tools_naming(teams).items():
            protected += [
                f"Tool: {tool} (its policy rules name the team {team!r})" for tool in tools
            ]
            self.message_user(request, rule_teams.still_named(team, tools), messages.ERROR)
        return deleted, counts, perms_needed, protected

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if request.method != "POST":
            return super().changelist_view(request, extra_context)
        # The list's actions (delete) in one transaction, as the delete page is: the teams
        # locked by get_deleted_objects stay so until they are deleted.
        with transaction.atomic():
            return super().changelist_view(request, extra_context)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The form's initial values are what the team was before this save.
        before = {
            "name": form.initial.get("name", ""),
            "permissions": permission_names(form.initial.get("permissions", [])),
        }
        super().save_related(request, form, formsets, change)
        if change:
            record_team_change(group=form.instance, before=before, changed_by=request.user)
        else:
            record_team_creation(group=form.instance, created_by=request.user)


@admin.register(TOTPDevice)
class RecoveryTOTPDeviceAdmin(HoldingNoMore, SecretsNotLookedUp, TOTPDeviceAdmin):
    """People's authenticator apps, for recovery only: an admin may see that a device exists
    and delete it (its owner lost it, and sets up a new one at their next sign-in), audited.
    Nobody adds or edits one for someone else (whoever chose its secret could pass as them),
    and no page shows a secret (``OTP_ADMIN_HIDE_SENSITIVE_DATA``)."""

    # Nor does a list lookup (?key__startswith=...) tell the secret one character at a time.
    secret_fields = ("key",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # Deleting one leaves the password alone between anyone and the account: not for the
    # account of someone who holds more (``HoldingNoMore``, as on the Users page).
    guarded_as = "person"

    def guarded(self, obj: Any) -> Any:
        return obj.user

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Nor one's own: with no app left, the session enrols a new one without a code, so
        # a session verified long ago (a stolen cookie) swapped in its holder's app, which
        # the account page refuses without a fresh code (``two_factor.may_enrol``).
        if obj is not None and obj.user_id == request.user.pk:
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: TOTPDevice) -> None:
        super().delete_model(request, obj)
        _two_factor_removed(request, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TOTPDevice]) -> None:
        devices = list(queryset.select_related("user"))
        super().delete_queryset(request, queryset)
        _two_factor_removed(request, devices)


def _two_factor_removed(request: HttpRequest, devices: list[TOTPDevice]) -> None:
    for device in devices:
        record(
            action="auth.two_factor_removed",
            actor=request.user,
            outcome="removed_by_admin",
            data={"user": device.user.get_username(), "device": device.name},
            people=("user",),
        )


@admin.register(AccessAttempt)
class AuditedAccessAttemptAdmin(AccessAttemptAdmin):
    """django-axes' failed sign-ins: deleting one lifts the lock it holds, which the trail
    records (who lifted it, for which name and address) as it records the lock.

    The name tried is shown as the trail keeps it: a name that is no account may be a
    password typed into the wrong box, so it shows as a fingerprint. The form data axes
    keeps (the typed name again, in the query string and the POST) is not shown."""

    list_display = [
        "name_tried" if field == "username" else field for field in AccessAttemptAdmin.list_display
    ]
    fieldsets = (
        (None, {"fields": ("name_tried", "path_info", "failures_since_start", "expiration")}),
        ("Meta Data", {"fields": ("user_agent", "ip_address", "http_accept")}),
    )
    readonly_fields = [
        "name_tried",
        *(f for f in AccessAttemptAdmin.readonly_fields if f not in ("get_data", "post_data")),
    ]

    # Nor can a search or a list lookup spell out the name tried (?username__startswith=h,
    # then hu...): a name is found only whole, and the form data not at all.
    search_fields = [
        "=username" if field == "username" else field for field in AccessAttemptAdmin.search_fields
    ]

    def lookup_allowed(self, lookup: str, value: Any, request: HttpRequest) -> bool:
        field = lookup.split("__", 1)[0]
        if field in ("get_data", "post_data") or (
            field == "username" and lookup not in ("username", "username__exact")
        ):
            return False
        return super().lookup_allowed(lookup, value, request)

    @admin.display(description="name tried")
    def name_tried(self, attempt: AccessAttempt) -> str:
        return attempted_name(attempt.username or "")[0]

    def delete_model(self, request: HttpRequest, obj: AccessAttempt) -> None:
        super().delete_model(request, obj)
        _lockouts_lifted(request, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[AccessAttempt]) -> None:
        attempts = list(queryset)
        super().delete_queryset(request, queryset)
        _lockouts_lifted(request, attempts)


def _lockouts_lifted(request: HttpRequest, attempts: list[AccessAttempt]) -> None:
    for attempt in attempts:
        name, known = attempted_name(attempt.username or "")
        record(
            action="auth.lockout_lifted",
            actor=request.user,
            outcome="lifted_by_admin",
            data={
                "username": name,
                "known_user": known,
                "ip": attempt.ip_address or "",
                "failures": attempt.failures_since_start,
            },
            people=("username",) if known else (),
        )
