"""Agent tokens: issued once, stored as a hash, compared in constant time, revocable."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.log import record
from tools_registry import sql
from tools_registry.models import Agent, AgentToken

TOKEN_SCHEME = "cst"  # noqa: S105 - the public prefix of every token, not a secret
# A token's last-used time is written at most this often, so auth is not a write per call.
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_TOKEN_LENGTH = 200


def _hash_secret(secret: str) -> str:
    # The secret is 256 random bits, so a plain SHA-256 cannot be brute-forced.
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def issue_token(*, agent: Agent, created_by: Any = None, label: str = "") -> tuple[AgentToken, str]:
    """Create a token; the plaintext is returned once and never stored."""
    prefix = secrets.token_hex(5)
    secret = secrets.token_urlsafe(32)
    token = AgentToken.objects.create(
        agent=agent,
        label=label,
        prefix=prefix,
        secret_hash=_hash_secret(secret),
        created_by=created_by,
    )
    record(
        action="token.created",
        actor=created_by,
        agent=agent,
        data={"token_prefix": prefix, "label": label},
    )
    return token, f"{TOKEN_SCHEME}_{prefix}_{secret}"


@transaction.atomic
def revoke_token(*, token: AgentToken, revoked_by: Any = None) -> AgentToken:
    """Revoke a token; the next request that carries it is refused. Revoking twice is a no-op.

    The agent's run lock first, exclusive, as a stop takes it (``sql.lock_agent_for_stop``):
    a submission authenticated with the token holds it shared from its first statement, and
    reads whether its token is still active right after (``sql.token_active_statement``).
    So a revocation waits for the submissions under way (whose calls were made while the
    token was good), and one authenticated before the revocation but not yet in its
    transaction waits for it to commit, then finds the token revoked and creates nothing:
    the door's check alone left it to create a call, which a reviewer could approve and a
    worker run, since a claim checks the agent, never the token.
    """
    sql.lock_agent_for_stop(token.agent_id)
    locked = (
        AgentToken.objects.select_for_update(of=("self",)).select_related("agent").get(pk=token.pk)
    )
    if locked.revoked_at is None:
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        record(
            action="token.revoked",
            actor=revoked_by,
            agent=locked.agent,
            data={"token_prefix": locked.prefix, "label": locked.label},
        )
    return locked


def authenticate_token(raw: str) -> Agent | None:
    """The enabled agent whose active token this is, or None (``authenticated_token``)."""
    token = authenticated_token(raw)
    return None if token is None else token.agent


def authenticated_token(raw: str) -> AgentToken | None:
    """The active token this is, with its enabled agent, or None. Constant-time comparison.

    Revocation and the agent's ``enabled`` flag are read from the database on every
    request, so both take effect at once. A submission carries the token's id into its
    transaction, which reads it again (``gateway.intake``): a revocation that commits after
    this check but before the submission's transaction still refuses it.
    """
    if len(raw) > MAX_TOKEN_LENGTH or "\x00" in raw:
        # No token holds a NUL, and PostgreSQL refuses to compare a string with one.
        return None
    scheme, _, rest = raw.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != TOKEN_SCHEME or not prefix or not secret:
        return None
    token = sql.active_token(prefix)
    if token is None:
        _hash_secret(secret)  # same work as a hit, so timing does not reveal prefixes
        return None
    if not hmac.compare_digest(token.secret_hash, _hash_secret(secret)):
        return None
    agent = token.agent
    if not agent.enabled:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        AgentToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
