"""Identity providers: whose tokens prove which end user a call is for; audited, since a
change decides whose roles are believed."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from audit.log import record
from tools_registry.models import TOKEN_ALGORITHMS, IdentityProvider

FIELDS = (
    "name",
    "issuer",
    "audience",
    "jwks_url",
    "user_id_claim",
    "roles_claim",
    "algorithms",
    "max_token_age_seconds",
)


class IdentityProviderInvalid(ValidationError):
    """The provider's settings break a rule; ``message_dict`` maps fields to problems."""


def check_identity_provider(provider: IdentityProvider) -> None:
    problems: dict[str, list[str]] = {}
    algorithms = provider.algorithms
    if (
        not isinstance(algorithms, list)
        or not algorithms
        or not all(a in TOKEN_ALGORITHMS for a in algorithms)
    ):
        problems["algorithms"] = [
            f"One or more of {', '.join(TOKEN_ALGORITHMS)}: public-key algorithms only."
        ]
    age = provider.max_token_age_seconds
    if not isinstance(age, int) or isinstance(age, bool) or age < 60:
        problems["max_token_age_seconds"] = ["A whole number of seconds, at least 60."]
    for name in ("issuer", "audience", "user_id_claim", "roles_claim"):
        if not str(getattr(provider, name) or "").strip():
            problems[name] = ["Required."]
    if problems:
        raise IdentityProviderInvalid(problems)


def _snapshot(provider: IdentityProvider) -> dict[str, Any]:
    return {name: getattr(provider, name) for name in FIELDS}


@transaction.atomic
def save_identity_provider(*, provider: IdentityProvider, changed_by: Any) -> IdentityProvider:
    """Create or update ``provider``; audited as ``identity_provider.created`` or, with the
    before/after values of what changed, ``identity_provider.updated``."""
    check_identity_provider(provider)
    if provider._state.adding:
        provider.save()
        record(action="identity_provider.created", actor=changed_by, data=_snapshot(provider))
        return provider
    before = _snapshot(IdentityProvider.objects.select_for_update().get(pk=provider.pk))
    provider.save()
    after = _snapshot(provider)
    changed = [key for key in after if after[key] != before[key]]
    if changed:
        record(
            action="identity_provider.updated",
            actor=changed_by,
            data={
                "name": provider.name,
                "before": {key: before[key] for key in changed},
                "after": {key: after[key] for key in changed},
            },
        )
    return provider
