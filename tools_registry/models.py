from __future__ import annotations

import base64
import secrets
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from core.hosts import host_and_port, https_or_here
from tools_registry.policy import Risk
from tools_registry.upstreams import secrets as upstream_secrets


def no_credentials_in_url(url: str) -> None:
    """A URL without a user and password (``https://svc:pw@host/``): the client sends them
    as Basic credentials, yet a URL is shown on the admin's pages, to whoever may view
    upstreams, where header values are never shown."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return  # not a URL at all: the URL field's own check says so
    if "@" in netloc:
        raise ValidationError(
            "Leave the user and password out of the URL (it is shown): send them as a header, "
            "'Authorization: Basic <base64 of user:password>', stored encrypted."
        )


def without_password(url: str) -> str:
    """``url`` as shown to people: a user and password in it (stored before
    ``no_credentials_in_url`` refused them; a token may be the user) replaced by dots, as
    header values are."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "••••••" if "@" in url else url
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="••••••@" + host_and_port(parts)).geturl()


class Upstream(models.Model):
    """A system whose tools Countersign imports and calls on agents' behalf: an MCP server,
    or an HTTP API described by an OpenAPI document. Set up by admins (the admin or
    ``manage.py add_upstream``); its URL may well be a private address (internal APIs are
    the point), but nothing an agent sends can change where a call goes.
    """

    class Kind(models.TextChoices):
        MCP = "mcp", "MCP server"
        OPENAPI = "openapi", "HTTP API (OpenAPI)"

    name = models.SlugField(
        max_length=32,
        unique=True,
        # Neither "__" nor a last "_": the first "__" of a tool's name then ends its
        # upstream's, so upstream "a" offering "b__c" and upstream "a__b" offering "c" cannot
        # both claim "a__b__c" (the first imported would keep the other's name for good).
        validators=[
            RegexValidator(
                r"__|_$",
                inverse_match=True,
                message="The name may not hold '__' or end with '_': it starts its tools' names.",
            )
        ],
        help_text="Prefix of its tools' names: <name>__<tool>. Letters, digits, - and _ "
        "only, with no '__' and no '_' at the end.",
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    url = models.URLField(
        max_length=2048,
        validators=[no_credentials_in_url],
        help_text="The MCP endpoint, or the URL of the OpenAPI document.",
    )
    base_url = models.URLField(
        max_length=2048,
        blank=True,
        validators=[no_credentials_in_url],
        help_text="HTTP APIs: where the calls go, if not the document's first server.",
    )
    # Header names and values to send with every request (e.g. Authorization), as a Fernet
    # token (tools_registry.upstreams.secrets): never stored, shown or logged in clear.
    headers_encrypted = models.TextField(blank=True, editable=False)
    header_names = models.JSONField(default=list, blank=True, editable=False)
    timeout_seconds = models.FloatField(
        default=10,
        # httpx refuses a negative timeout, and a huge one is none.
        validators=[MinValueValidator(0.5), MaxValueValidator(600)],
        help_text="Per request: connecting, importing, and the default for calls (0.5 to 600 s).",
    )
    enabled = models.BooleanField(default=True)
    # Empty unless an admin names it: most APIs ignore an Idempotency-Key they are sent, and
    # a header set by default made every API count as honouring it, so a write that timed
    # out after its effect was re-run by itself (one effect more per re-run). Upstreams
    # registered before this default keep the header they had (migration 0018).
    idempotency_header = models.CharField(
        max_length=64,
        blank=True,
        default="",
        validators=[upstream_secrets.valid_idempotency_header],
        help_text="HTTP APIs: the header the API honours as an idempotency key (e.g. "
        "Idempotency-Key): a repeat of a key gets the first request's answer, never a second "
        "effect. Named, each call carries its key in it, and a write whose outcome is unknown "
        "(a timeout, a 5xx) is sent again with its key by itself. Empty (for an API that "
        "does not honour one, or if unsure): no key is sent and such a write waits for a "
        "person on the Needs attention page.",
    )
    rerunnable = models.BooleanField(
        default=False,
        help_text="MCP servers: its tools honour the idempotency key in _meta, so a call whose "
        "outcome is unknown may be sent again with the same key.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_sync_error = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Tool(models.Model):
    """A tool agents may call: declared in code, or imported from an upstream. Its policy is
    set by tool admins."""

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField()
    input_schema = models.JSONField(default=dict)
    risk = models.CharField(max_length=16, choices=Risk.choices)
    # Hash of name, description and schema: recorded on every call, bound into approvals.
    version = models.CharField(max_length=16)
    # False once its handler disappeared from code, or the tool from its upstream (or the
    # upstream was switched off): such a tool can never run.
    available = models.BooleanField(default=True)
    # Tools imported from an upstream: where, under which name, and (HTTP APIs) how a call
    # becomes a request. ``upstream_spec`` is what the upstream last proposed, so a re-sync
    # tells the upstream's changes from an admin's edits.
    upstream = models.ForeignKey(
        Upstream, null=True, blank=True, on_delete=models.PROTECT, related_name="tools"
    )
    upstream_name = models.CharField(max_length=200, blank=True)
    upstream_operation = models.JSONField(null=True, blank=True, editable=False)
    upstream_spec = models.JSONField(null=True, blank=True, editable=False)
    # What the tool does to the world beyond its risk class, from code (MCP annotations).
    overwrites = models.BooleanField(
        default=False,
        help_text="Deletes or overwrites existing data (destructive tools always do).",
    )
    idempotent = models.BooleanField(
        default=False, help_text="Repeating a call with the same arguments has no further effect."
    )
    open_world = models.BooleanField(
        default=True, help_text="Reaches systems outside the organisation's own."
    )
    output_schema = models.JSONField(
        null=True, blank=True, help_text="JSON Schema of a successful result (reads only)."
    )
    enabled = models.BooleanField(default=True)

    # Policy. Defaults come from the risk class (tools_registry.policy).
    timeout_seconds = models.FloatField()
    max_attempts = models.PositiveSmallIntegerField()
    rate_limit_per_agent = models.CharField(
        max_length=32, blank=True, help_text='For example "30/minute"; empty for no limit.'
    )
    rate_limit_per_user = models.CharField(
        max_length=32,
        blank=True,
        help_text="Limit per end user (on_behalf_of), for example 10/hour; empty for no limit.",
    )
    approvals_required = models.PositiveSmallIntegerField()
    approval_ttl_seconds = models.PositiveIntegerField()
    breaker_threshold = models.PositiveSmallIntegerField(
        help_text="Consecutive failures that open the circuit breaker."
    )
    breaker_cooldown_seconds = models.PositiveIntegerField()
    sensitive_fields = models.JSONField(
        default=list, blank=True, help_text="Dotted argument paths masked everywhere."
    )
    # Reviewers see e-mail domains, a phone's last digits and a card's last four; a field
    # listed here shows nothing at all without an audited reveal.
    secret_fields = models.JSONField(
        default=list,
        blank=True,
        help_text="Dotted argument paths reviewers never see even in part without a reveal.",
    )
    # Ordered policy rules in CEL (tools_registry.rules): the first that holds decides.
    rules = models.JSONField(default=list, blank=True)
    reminder_after_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Remind reviewers when a call waits this long."
    )
    # Protected: deleting the team cleared it silently, a policy change with no event and
    # no new policy version; a tool admin changes it first (``update_policy``, audited).
    escalation_group = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Team told when a call is about to expire undecided.",
    )
    # Bumped on every policy change; decisions record the version they were made under.
    policy_version = models.PositiveIntegerField(default=1)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        # The database's backstop for rules update_policy validates with friendlier messages.
        constraints = [
            models.CheckConstraint(
                condition=models.Q(timeout_seconds__gt=0),
                name="tool_timeout_positive",
                violation_error_message="The timeout must be more than 0 seconds.",
            ),
            models.CheckConstraint(
                condition=models.Q(max_attempts__gte=1),
                name="tool_attempts_at_least_one",
                violation_error_message="A call needs at least 1 attempt.",
            ),
            # Writes and destructive calls are never retried by the executor.
            models.CheckConstraint(
                condition=models.Q(risk="read") | models.Q(max_attempts=1),
                name="tool_writes_run_once",
                violation_error_message="Write and destructive calls run once: max attempts must be 1.",
            ),
        ]
        permissions = [
            ("review_tool", "Can review calls of this tool"),
            ("reveal_tool_arguments", "Can reveal masked arguments of this tool's calls"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def runnable(self) -> bool:
        return self.enabled and self.available

    @property
    def hidden_fields(self) -> list[str]:
        """The argument paths masked whole wherever a call's values are kept or quoted (the
        trail, refusals' messages): the secret fields and the sensitive ones."""
        return [*(self.secret_fields or []), *(self.sensitive_fields or [])]

    @property
    def needs_approval(self) -> bool:
        return self.risk != Risk.READ


class ToolUserObjectPermission(UserObjectPermissionBase):
    """Direct foreign-key grant of a permission on one tool to one user (guardian)."""

    # Indexed by guardian's unique (user, permission, content_object), which starts with it.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, db_index=False)
    content_object = models.ForeignKey(Tool, on_delete=models.CASCADE)


class ToolGroupObjectPermission(GroupObjectPermissionBase):
    """Direct foreign-key grant of a permission on one tool to a team (guardian)."""

    # Indexed by guardian's unique (group, permission, content_object), which starts with it.
    group = models.ForeignKey(Group, on_delete=models.CASCADE, db_index=False)
    content_object = models.ForeignKey(Tool, on_delete=models.CASCADE)


def _new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# Signature algorithms a user token may use: public-key ones only. ``none`` and the HMAC
# family (HS256 ...) are never accepted: with them, anyone holding the provider's public
# key (published in its JWKS) could sign a token.
TOKEN_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def _default_algorithms() -> list[str]:
    return ["RS256", "ES256"]


def keys_over_tls(url: str) -> None:
    """A key set fetched over https, or over http from this machine only: anyone on the way
    of a plain fetch could serve keys of their own, and sign any user's token."""
    if https_or_here(url):
        return
    raise ValidationError(
        "Fetch the signing keys over https (http only from this machine): anyone on the way "
        "of a plain fetch could serve keys of their own and sign any user's token."
    )


class IdentityProvider(models.Model):
    """An organisation's identity provider, whose tokens for its people (JWTs) agents
    forward so that Countersign knows, for sure, whom a call is for and in which roles."""

    name = models.SlugField(max_length=64, unique=True)
    issuer = models.CharField(
        max_length=500, help_text="The tokens' iss claim, exactly as the provider writes it."
    )
    audience = models.CharField(
        max_length=500,
        help_text="The aud claim a token must carry to be accepted here (the client id or "
        "API identifier the provider issues Countersign's tokens for).",
    )
    jwks_url = models.URLField(
        max_length=2048,
        validators=[keys_over_tls],
        help_text="Where the provider publishes its signing keys (JWKS): https, or http from "
        "this machine only.",
    )
    user_id_claim = models.CharField(
        max_length=100, default="sub", help_text="The claim that holds the user's id."
    )
    roles_claim = models.CharField(
        max_length=100,
        default="roles",
        help_text="The claim that lists the user's roles; a dotted path reaches into an "
        "object (realm_access.roles).",
    )
    algorithms = models.JSONField(
        default=_default_algorithms,
        help_text="The signature algorithms accepted; public-key ones only.",
    )
    # The longest a token is honoured after it was issued, whatever its exp says: a provider
    # set (by mistake) to mint tokens for ten years would otherwise have each stolen one
    # honoured for ten years. A day is longer than any provider's default access token.
    # db_default: a process of the release before this one, still running during an upgrade,
    # adds providers without it.
    max_token_age_seconds = models.PositiveIntegerField(
        default=24 * 3600,
        db_default=24 * 3600,
        validators=[MinValueValidator(60)],
        help_text="A token is refused this many seconds after it was issued (its iat), even "
        "if it has not expired yet. At least 60.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Agent(models.Model):
    """A program that calls tools through Countersign, owned by a person."""

    class UserRoles(models.TextChoices):
        """Where the roles of the end user a call is for come from."""

        NONE = "none", "Nowhere: on_behalf_of names the user, without roles"
        ASSERTED = "asserted", "The agent asserts them (trusted, within the roles listed)"
        VERIFIED = "verified", "The user's token from the identity provider, verified"

    class UnscopedAccess(models.TextChoices):
        """What a call gets that names no user, or none of the roles the agent scopes."""

        ALLOWLIST = "allowlist", "Every tool on the allowlist"
        READS = "reads", "The allowlist's read tools only"
        NOTHING = "nothing", "No tool"

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_agents"
    )
    allowed_tools = models.ManyToManyField(Tool, blank=True, related_name="agents")
    max_rounds_per_session = models.PositiveIntegerField(default=10)
    # Signs the webhooks Countersign sends to this agent (Standard Webhooks: HMAC-SHA256
    # keyed with the base64 part of ``whsec_...``).
    webhook_secret = models.CharField(max_length=100, default=_new_webhook_secret)
    # The secrets earlier rotations replaced, newest first, each ``{"secret", "until"}`` (an
    # ISO 8601 instant): webhooks carry their signatures too until then, so a receiver that
    # has not switched yet (even across two rotations in a day) keeps verifying. Only
    # tools_registry.services.webhook_secrets writes it; it holds at most a few. The database
    # default lets the release before it (which knows no such column) create agents while a
    # rollout is under way.
    previous_webhook_secrets = models.JSONField(
        default=list, db_default=[], blank=True, editable=False
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    # The end users the agent acts for (tools_registry.end_users) and what each role of
    # theirs may call (tools_registry.role_scopes).
    user_roles_from = models.CharField(
        max_length=16, choices=UserRoles.choices, default=UserRoles.NONE
    )
    assertable_roles = models.JSONField(
        default=list, blank=True, help_text="The roles this agent may assert for its users."
    )
    identity_provider = models.ForeignKey(
        IdentityProvider,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="agents",
        help_text="Verifies the user tokens this agent forwards.",
    )
    role_scopes = models.JSONField(
        default=dict,
        blank=True,
        help_text='Per role, the risk classes and tools it may use: {"viewer": {"risks": '
        '["read"]}, "billing": {"risks": ["read"], "tools": ["issue_refund"]}}.',
    )
    unscoped_access = models.CharField(
        max_length=16,
        choices=UnscopedAccess.choices,
        default=UnscopedAccess.ALLOWLIST,
        help_text="What a call gets that names no user, or none of the roles above.",
    )

    # Stopped by a person (services.agents.stop_agent): every token of the agent is refused
    # with the reason, and nothing of it is claimed, until it is resumed.
    stopped_at = models.DateTimeField(null=True, blank=True, editable=False)
    stop_reason = models.TextField(blank=True, editable=False)
    stopped_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )

    class Meta:
        ordering = ["name"]
        permissions = [("stop_agent", "Can stop and resume agents")]

    def __str__(self) -> str:
        return self.name

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None


class AgentToken(models.Model):
    """A bearer token of an agent. Only a hash of the secret part is stored."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tokens")
    label = models.CharField(max_length=100, blank=True)
    # Public, unique part of the token: finds the row without scanning hashes.
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.agent.name} token {self.prefix}"

    @property
    def active(self) -> bool:
        return self.revoked_at is None
