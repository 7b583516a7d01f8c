"""Every kind of audit event, with what it means. docs/audit.md's catalogue and the auditor's
action filter are made from this table; a test fails when code records an action that is
not listed here."""

from __future__ import annotations

ACTIONS: dict[str, str] = {
    # A tool call's life (approvals/events.py).
    "call.submitted": "An agent proposed a call: masked arguments, reasoning, token cost, the "
    "policy it is bound to (version, the rule that applied) and the risk signals it raised.",
    "call.refused": "A request was refused before a call existed (unknown or not-allowed tool, "
    "a tool outside the end user's roles, a malformed end user, roles the agent may not assert, "
    "an invalid user token, disabled tool, invalid arguments, rate limit, too many rounds); "
    "outcome is the error code.",
    "call.decision": "One reviewer's verdict, with the arguments hash and policy version they "
    "decided on, and the current state they were shown (masked) with its hash.",
    "call.approved": "The call reached its quorum of approvals, or was approved as it arrived by a "
    "policy rule (which rule of which policy version) or a reviewer's standing approval.",
    "call.arguments_edited": "A reviewer corrected the arguments as part of approving: the "
    "originals and the corrected ones (masked), both hashes, the approvals it reset.",
    "call.note_added": "A reviewer commented on a call without a verdict (kept from a page that "
    "went stale, or added afterwards).",
    "standing_approval.granted": "With an approval, a reviewer also allowed the agent's later "
    "calls of the tool: which (same arguments, a condition, any), until when, how many.",
    "standing_approval.revoked": "Its author or an admin revoked a standing approval, or a "
    "stop of its agent did, or a rejection of the call it was given with.",
    "call.rejected": "A reviewer vetoed the call.",
    "call.cancelled": "The agent withdrew its pending call, or a person stopped the agent (with "
    "the reason).",
    "call.expired": "Nobody decided before the approval deadline.",
    "call.execution_started": "The intent, committed before the handler runs: tool, masked "
    "arguments, agent, session, reasoning, idempotency key, attempt.",
    "call.execution_finished": "The result: status, latency, masked result or error, token cost.",
    "call.execution_refused": "An approved call was not run: its tool or agent was switched off, "
    "or the tool changed, since the approval; it failed with that code, its handler never ran.",
    "call.stale_result_discarded": "A worker that lost its lease came back; its result was not "
    "stored.",
    "call.late_result_accepted": "A worker that lost its lease came back with its handler's "
    "verdict (succeeded, or failed: the effect did not happen) while the call was still "
    "unknown and untouched since: the result settled it, as on time.",
    "call.escalated": "The call needs a person (a failed destructive call, an unknown outcome).",
    "call.reconciled": "The outcome of an unknown call was settled by the tool's lookup or a "
    "person.",
    "call.rechecked": "A person asked the downstream again about an unknown call, which did "
    "not settle it: what it said and what followed.",
    "call.execution_resent": "An approved call's task never started; the sweep sent it again.",
    "call.lease_expired": "A worker went silent past its lease; the fence moved so its late "
    "write is refused, and the outcome became unknown.",
    "call.abandoned": "A read stayed received past the longest it could run: the request that "
    "received it died before running it; it failed, nothing ran.",
    "call.rerun": "The call went back to the executor with the same idempotency key (the "
    "downstream said the effect did not happen, or a person confirmed a re-run).",
    "call.resolved": "A person marked the real outcome of a call that needed attention.",
    "call.retry_requested": "The agent asked to run a failed write again, with the same key.",
    "call.retry_refused": "The agent asked to run a failed write again and was refused, the call "
    "left as it was: outcome is the error code (retry_not_allowed: a destructive call, the tool "
    "or agent off, a stop, its retries spent, the tool's policy changed since its approval; "
    "circuit_open; rate_limited), with the message the agent was given.",
    "call.arguments_revealed": "A reviewer unmasked a call's sensitive arguments, with a reason "
    "(the values are not recorded).",
    "call.reviewers_notified": "The tool's reviewers were told of a new pending call by e-mail.",
    "call.reminder_sent": "Reviewers who had not voted were reminded of a waiting call.",
    "call.escalation_sent": "A tool's escalation team was told of a call about to expire.",
    "call.notification_failed": "Some people a notification event named got no e-mail (kind, "
    "who); outcome says why: their mailbox was refused, or the mail server was down.",
    "call.webhook_failed": "Countersign gave up delivering a call's webhook to the agent.",
    # Tools at run time (approvals/breaker.py).
    "tool.breaker_opened": "A tool failed too often in a row; calls are refused for the cool-down.",
    "tool.breaker_closed": "A tool's probe call succeeded, or an operator closed its breaker (`reset_breaker`); calls flow again.",
    # Tools, policy, grants, tokens (tools_registry/services.py, the admin).
    "tool.registered": "A tool declared in code got its Tool row.",
    "tool.updated_from_code": "A tool's description, schema or risk changed in code.",
    "tool.disabled_code_gone": "A tool's code disappeared; the tool can no longer run.",
    "tool.imported": "A tool was imported from an upstream (its source name, risk, version).",
    "tool.changed": "A re-sync found an imported tool changed upstream (schema, description, "
    "hints); a new version refuses approvals of the old one.",
    "tool.edited": "An admin gave an imported tool its own description or risk (re-syncs keep "
    "them).",
    "tool.removed_upstream": "A tool disappeared from its upstream; it was disabled, not deleted.",
    "upstream.registered": "An admin registered an upstream (its URL and header names, never "
    "their values).",
    "upstream.headers_changed": "The headers sent to an upstream changed (names only).",
    "upstream.headers_reencrypted": "An upstream's stored headers were encrypted again with "
    "the first key of UPSTREAM_SECRETS_KEY (rotate_upstream_keys; names only).",
    "upstream.changed": "An admin changed an upstream's settings (URL, base URL, timeout, "
    "idempotency header, rerunnable), before and after; the names of headers dropped because "
    "the host changed.",
    "upstream.deleted": "An admin deleted an upstream that had no tools, its stored headers with "
    "it: its name, kind, URLs and the headers' names.",
    "upstream.sync_failed": "An upstream's offer could not be read; nothing was changed.",
    "upstream.enabled": "An upstream was switched back on.",
    "upstream.disabled": "An upstream was switched off: its tools can no longer run.",
    "tool.policy_changed": "A tool admin changed a tool's policy (before and after).",
    "grant.added": "A user or team may now review a tool's calls.",
    "grant.removed": "A review grant was withdrawn.",
    "token.created": "An agent token was issued (its public prefix only).",
    "token.revoked": "An agent token was revoked.",
    "agent.created": "A tool admin created an agent (owner, allowlist, limits).",
    "agent.updated": "A tool admin changed an agent (allowlist, enabled, limits), before and "
    "after.",
    "agent.stopped": "A person stopped an agent: its tokens are refused; the reason, and every "
    "pending call it cancelled.",
    "agent.resumed": "A stopped agent was resumed (the stop's reason, and a note).",
    "end_user.refused": "A request was refused for the end user it named (malformed, roles the "
    "agent may not assert, an invalid user token, the identity provider out of reach) before "
    "any tool was asked; outcome is the error code. The token itself is never recorded.",
    "identity_provider.created": "An admin registered an identity provider whose user tokens "
    "agents may forward.",
    "identity_provider.updated": "An identity provider's settings changed (before and after).",
    "agent.webhook_secret_rotated": "An agent's webhook signing secret was replaced: whether "
    "the old secrets were expired now (a leak), how many old secrets still sign and until "
    "when, how many ended before their grace period did. No secret is ever recorded.",
    "user.access_changed": "A person's teams, model-wide permissions, status (active, staff, "
    "superuser), username or e-mail (separation of duties knows them by these) changed in the "
    "admin, or their teams or e-mail at a single sign-on (as the provider says): who changed "
    "them (countersign for a sign-in), before and after.",
    # People signing in to the web UI (audit/receivers.py).
    "auth.login": "A person signed in.",
    "auth.logout": "A person signed out, or their session ended: reason max_age (it was "
    "SESSION_MAX_AGE_SECONDS old) or idle (nothing but the page's own polling for "
    "SESSION_IDLE_SECONDS).",
    "auth.login_failed": "A sign-in failed; the name tried is kept only if it is a real "
    "account (otherwise a fingerprint of it), the password never.",
    "auth.groups_changed": "A person was added to or removed from teams (roles).",
    "auth.permissions_changed": "Model-wide permissions (such as reading the audit trail) were "
    "given to or taken from a person or a team.",
    "auth.locked_out": "Too many failed sign-ins for an account or from an address: sign-in "
    "is refused for the cool-off (the name only if it is a real account, the address, the "
    "limit and the cool-off).",
    "auth.two_factor_enrolled": "A person set up an authenticator app (TOTP) as their second "
    "factor, replacing any earlier one.",
    "auth.two_factor_verified": "A person's code from their authenticator app was accepted (at "
    "sign-in or at a re-authentication).",
    "auth.two_factor_failed": "A code from an authenticator app was refused (wrong, or no "
    "device set up).",
    "auth.two_factor_removed": "An admin deleted a person's authenticator app (they lost it; "
    "they set up a new one at their next sign-in). Admins never add or edit one for someone "
    "else.",
    "auth.password_set": "A superuser set a person's password in the admin (outcome "
    "set_by_admin: who, for whom), or a person changed their own (outcome changed_by_owner). "
    "Never the password.",
    "auth.lockout_lifted": "An admin deleted failed sign-ins in the admin (Axes: access "
    "attempts), lifting the lock they held: the name (only if it is a real account), the "
    "address and the count of failures.",
    "auth.team_created": "An admin created a team in the admin: who, and the model-wide "
    "permissions it was given.",
    "auth.team_changed": "An admin renamed a team or changed its model-wide permissions: who, "
    "before and after, and its members (policy rules and the single sign-on map name teams).",
    "auth.team_deleted": "An admin deleted a team: its members (who lose its grants with it) "
    "and its grants of tools are in the event.",
    "auth.user_created": "An admin created a person's account in the admin: who, for whom, "
    "and whether with a password the admin chose (never the password).",
    "auth.user_deleted": "An admin deleted a person's account: their teams and their own "
    "grants of tools are in the event.",
    "auth.sso_user_created": "A person signed in through single sign-on for the first time; "
    "their account was created (with no password) and their teams taken from the provider.",
    "auth.sso_refused": "A single sign-on was refused: the name the provider gave belongs to "
    "an account not linked to that person (their sub claim), which a name alone never opens.",
    "auth.sso_linked": "An admin linked an account to a person at the single sign-on provider "
    "(manage.py link_sso); the earlier link, if any, is kept in the event.",
    "reviewer.reauthenticated": "A reviewer re-entered their password (and second-factor "
    "code, if they have one) before a destructive approval.",
    "reviewer.reauthentication_failed": "A reviewer's re-entered password, or code, was wrong.",
    # The trail about itself.
    "audit.chain_verified": "The hash chain was walked; ok or the first broken link. The actor "
    "is the auditor who asked for the walk from the analytics page, or Countersign for the "
    "scheduled walk.",
    "audit.verification_requested": "An auditor asked for a walk of the hash chain now; a worker "
    "runs it in the background.",
    "audit.exported": "An auditor downloaded an export of the trail (CSV or JSON Lines, the "
    "outcome): the filters asked for, masked as any event's data; recorded before the first "
    "row is sent, so an export whose filters match it holds its own event. No row count.",
}


def describe(action: str) -> str:
    return ACTIONS.get(action, "")
