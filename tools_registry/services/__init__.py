"""State changes of the registry: tools from code, policy, tokens, agents and grants.

Each function changes one thing and writes its audit event in the same transaction.
"""

from __future__ import annotations

from tools_registry.services.agents import (
    AgentInvalid,
    Stop,
    check_end_users,
    resume_agent,
    save_agent,
    set_enabled,
    stop_agent,
)
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
from tools_registry.services.identity_providers import (
    IdentityProviderInvalid,
    check_identity_provider,
    save_identity_provider,
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
from tools_registry.services.webhook_secrets import (
    MAX_OLD_WEBHOOK_SECRETS,
    Rotation,
    old_secrets_valid_until,
    rotate_webhook_secret,
    signing_secrets,
)

__all__ = [
    "CODE_FIELDS",
    "LAST_USED_RESOLUTION",
    "MAX_OLD_WEBHOOK_SECRETS",
    "OBJECT_PERMISSIONS",
    "TOKEN_SCHEME",
    "AgentInvalid",
    "IdentityProviderInvalid",
    "PolicyInvalid",
    "Rotation",
    "Stop",
    "SyncReport",
    "access_of",
    "authenticate_token",
    "check_end_users",
    "check_identity_provider",
    "check_policy",
    "current_permissions",
    "grant",
    "grant_review",
    "issue_token",
    "old_secrets_valid_until",
    "record_access_change",
    "resume_agent",
    "revoke",
    "revoke_review",
    "revoke_token",
    "rotate_webhook_secret",
    "save_agent",
    "save_identity_provider",
    "set_enabled",
    "set_permissions",
    "signing_secrets",
    "stop_agent",
    "sync_tools",
    "update_policy",
]
