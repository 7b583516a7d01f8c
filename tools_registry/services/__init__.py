"""State changes of the registry: tools from code, policy, tokens, agents and grants.

Each function changes one thing and writes its audit event in the same transaction.
"""

from __future__ import annotations

from tools_registry.services.agents import save_agent, set_enabled
from tools_registry.services.grants import (
    OBJECT_PERMISSIONS,
    access_of,
    current_permissions,
    grant,
    grant_review,
    record_access_change,
    revoke,
    revoke_review,
    set_permissions,
)
from tools_registry.services.policies import PolicyInvalid, check_policy, update_policy
from tools_registry.services.sync import CODE_FIELDS, SyncReport, sync_tools
from tools_registry.services.tokens import (
    LAST_USED_RESOLUTION,
    TOKEN_SCHEME,
    authenticate_token,
    issue_token,
    revoke_token,
)
from tools_registry.services.webhook_secrets import rotate_webhook_secret, signing_secrets

__all__ = [
    "CODE_FIELDS",
    "LAST_USED_RESOLUTION",
    "OBJECT_PERMISSIONS",
    "TOKEN_SCHEME",
    "PolicyInvalid",
    "SyncReport",
    "access_of",
    "authenticate_token",
    "check_policy",
    "current_permissions",
    "grant",
    "grant_review",
    "issue_token",
    "record_access_change",
    "revoke",
    "revoke_review",
    "revoke_token",
    "rotate_webhook_secret",
    "save_agent",
    "set_enabled",
    "set_permissions",
    "signing_secrets",
    "sync_tools",
    "update_policy",
]
