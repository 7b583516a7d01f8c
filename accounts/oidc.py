"""Single sign-on with OpenID Connect (mozilla-django-oidc), teams taken from a claim.

The provider is the source of truth for the teams named in ``OIDC_TEAM_MAP``: at every SSO
sign-in a person joins the mapped teams their teams claim lists and leaves the mapped teams
it no longer lists, so someone removed from a team at the provider loses its grants at
their next sign-in. Teams that are not mapped are left as the admin set them. Every change
is audited (``user.access_changed``, and ``auth.groups_changed`` from the membership itself).
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from audit.log import record
from tools_registry.services.grants import access_of, record_access_change

logger = logging.getLogger(__name__)


def teams_from_claims(claims: dict[str, Any]) -> set[str]:
    """The Countersign teams the provider's claim puts this person in."""
    raw = claims.get(settings.OIDC_TEAMS_CLAIM) or []
    if isinstance(raw, str):
        raw = [raw]
    mapping: dict[str, str] = settings.OIDC_TEAM_MAP
    return {mapping[value] for value in raw if isinstance(value, str) and value in mapping}


@transaction.atomic
def sync_teams(*, user: Any, claims: dict[str, Any]) -> None:
    """Set the person's mapped teams to what the claim says; audit what changed."""
    managed = set(settings.OIDC_TEAM_MAP.values())
    wanted = teams_from_claims(claims)
    before = access_of(user, groups=user.groups.all())
    current = set(user.groups.filter(name__in=managed).values_list("name", flat=True))
    existing = {g.name: g for g in Group.objects.filter(name__in=managed)}
    for name in sorted(wanted - existing.keys()):
        # A mapped team must be set up (with its permissions) by an admin first.
        logger.warning("OIDC_TEAM_MAP names team %r, which does not exist", name)
    joining = [existing[n] for n in sorted((wanted - current) & existing.keys())]
    leaving = [existing[n] for n in sorted((current - wanted) & existing.keys())]
    if joining:
        user.groups.add(*joining)
    if leaving:
        user.groups.remove(*leaving)
    record_access_change(user=user, before=before, changed_by=None)


class TeamMappingOIDCBackend(OIDCAuthenticationBackend):
    """Matches people by the username claim (``OIDC_USERNAME_CLAIM``), creates them with no
    usable password (they sign in through the provider), and syncs their teams."""

    def authenticate(self, request: Any, **kwargs: Any) -> Any:
        """None (a failed sign-in, audited as one, and the sign-in page again) when the
        provider refuses the code: a reused, expired or forged one (the back button, a
        double click) is the provider's 400, not a 500 here."""
        try:
            return super().authenticate(request, **kwargs)
        except requests.RequestException as exc:
            logger.warning("SSO sign-in refused by the provider: %s", type(exc).__name__)
            return None

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(str(claims.get(settings.OIDC_USERNAME_CLAIM) or "").strip())

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        username = str(claims.get(settings.OIDC_USERNAME_CLAIM) or "").strip()
        return get_user_model()._default_manager.filter(
            **{get_user_model().USERNAME_FIELD: username}
        )

    @transaction.atomic
    def create_user(self, claims: dict[str, Any]) -> Any:
        user_model = get_user_model()
        user = user_model._default_manager.create_user(
            **{user_model.USERNAME_FIELD: str(claims[settings.OIDC_USERNAME_CLAIM]).strip()},
            email=str(claims.get("email") or ""),
            first_name=str(claims.get("given_name") or "")[:150],
            last_name=str(claims.get("family_name") or "")[:150],
        )
        user.set_unusable_password()
        user.save(update_fields=["password"])
        record(
            action="auth.sso_user_created",
            actor=user,
            outcome="ok",
            data={"sub": claims.get("sub", "")},
        )
        sync_teams(user=user, claims=claims)
        return user

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        if not user.is_active:
            # A deactivated person stays out, whatever the provider says.
            return None
        email = str(claims.get("email") or "")
        if email and email != user.email:
            user.email = email
            user.save(update_fields=["email"])
        sync_teams(user=user, claims=claims)
        return user
