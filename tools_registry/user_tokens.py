"""Verifying an end user's token (a JWT from the organisation's identity provider) with
PyJWT, against the provider's signing keys (its JWKS), fetched and cached per process.

A token is accepted only when its signature verifies with a key the provider publishes
for signing (an RSA one of 2048 bits or more), with an algorithm the provider is set to use (public-key ones only: never ``none``, never
HS256 and friends, whose "secret" would be the public key anyone can fetch), and its
issuer, audience and expiry are right, and it was issued (``iat``) at most the provider's
``max_token_age_seconds`` ago (a day by default), however long its ``exp`` lets it live.
Nothing is ever accepted unverified: when the keys
cannot be had (the provider is down), the token is refused with ``ProviderUnavailable``,
which callers answer as retryable.

The key set is fetched at most once per ``JWKS_CACHE_SECONDS`` (default 300); a token
signed with a key not in the cached set (the provider rotated its keys) fetches it again
(so does a token naming no key that the one key for its algorithm does not verify),
and so does the next token after a failed fetch, but never more than once per
``JWKS_MIN_REFRESH_SECONDS`` (default 5), counted from the end of the last fetch: a flood
of tokens with made-up key ids, or a provider that is down or hangs until the timeout, costs
the provider one request per interval, not one per call (and a cache set shorter than the
interval is kept for the interval); a token whose key is in the fresh cached set never
waits for a fetch under way. A token whose key was not looked for (the set was fetched less
than that interval ago) is refused as ``ProviderUnavailable`` (retryable): the provider may
have published it since.

Tokens are secrets: they are never logged, audited or put in an error message.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from django.conf import settings

from core import bounded_http
from core.json_values import UNSTORABLE
from tools_registry.models import TOKEN_ALGORITHMS, IdentityProvider
from tools_registry.role_scopes import (
    MAX_ROLE_LENGTH,
    MAX_USER_ID_LENGTH,
    folded,
    is_role,
    is_user_id,
)

MAX_TOKEN_LENGTH = 16 * 1024
MAX_JWKS_BYTES = 1024 * 1024
MAX_TOKEN_ROLES = 256
# Clocks of the provider and of Countersign may differ a little.
LEEWAY_SECONDS = 30

# The key types each algorithm family signs with (JWK "kty", and "crv" for EC keys).
_KEY_TYPES = {
    "RS": ("RSA", None),
    "PS": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


class TokenInvalid(Exception):
    """The token does not prove who the user is; ``reason`` says why (never the token)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ProviderUnavailable(Exception):
    """The provider's keys could not be had, so the token could not be checked."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class _KeySet:
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetched_at: float | None = None  # monotonic time of the last good fetch
    asked_at: float = 0.0  # monotonic time of the last fetch, good or not
    failure: str = ""


_key_sets: dict[str, _KeySet] = {}
_fetching: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def forget_keys() -> None:
    """Drop every cached key set (tests; an operator never needs it: the cache expires)."""
    with _guard:
        _key_sets.clear()


def verify(provider: IdentityProvider, token: str) -> dict[str, Any]:
    """The token's claims once it is proven genuine and current; ``TokenInvalid`` or
    ``ProviderUnavailable`` otherwise."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid(f"it is longer than {MAX_TOKEN_LENGTH} characters")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenInvalid("it is not a well-formed JWT") from None
    alg = header.get("alg")
    accepted = [a for a in provider.algorithms if a in TOKEN_ALGORITHMS]
    if not isinstance(alg, str) or alg not in accepted:
        raise TokenInvalid(
            f"it is signed with {alg!r}, not with one of the accepted algorithms "
            f"({', '.join(accepted)})"
        )
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenInvalid("its key id (kid) is not a string")
    asked = time.monotonic()
    try:
        return _decoded(provider, token, alg, _signing_key(provider.jwks_url, kid, alg))
    except jwt.InvalidSignatureError:
        if kid is not None:
            raise TokenInvalid("its signature does not verify") from None
    # A token that names no key is checked with the provider's one key for its algorithm,
    # which may be the key the provider has just rotated out (a token naming a key not in
    # the cached set fetches them again): fetched again the same way, at most once per
    # JWKS_MIN_REFRESH_SECONDS, the token is checked with the key published now.
    found = _pick(_keys(provider.jwks_url, refresh=True), None, alg)
    if not _fetched_since(provider.jwks_url, asked):
        raise ProviderUnavailable(
            "its signature does not verify with the provider's key fetched moments ago, "
            "which is fetched again within seconds"
        )
    if found is None:
        raise TokenInvalid("it names no key (kid), and the provider has no single key for it")
    try:
        return _decoded(provider, token, alg, found)
    except jwt.InvalidSignatureError:
        raise TokenInvalid("its signature does not verify") from None


def _decoded(
    provider: IdentityProvider, token: str, alg: str, jwk: dict[str, Any]
) -> dict[str, Any]:
    """The token's claims, checked with ``jwk``; ``TokenInvalid``, or PyJWT's
    ``InvalidSignatureError`` for a signature that ``jwk`` does not verify."""
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
    except (jwt.PyJWKError, jwt.InvalidKeyError):
        raise TokenInvalid("the provider's key for it does not fit its algorithm") from None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=provider.audience,
            issuer=provider.issuer,
            leeway=LEEWAY_SECONDS,
            # PyJWT only warns of an RSA key under 2048 bits, and verifies with it: a key that
            # short can be factored, and whoever did could sign any user with any roles.
            options={
                "require": ["exp", "iat", "iss", "aud"],
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.InvalidSignatureError:
        raise
    except jwt.InvalidKeyError:
        raise TokenInvalid(
            "the provider's key for it is too short to trust (an RSA key under 2048 bits)"
        ) from None
    except jwt.ExpiredSignatureError:
        raise TokenInvalid("it has expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenInvalid("it is not valid yet") from None
    except jwt.InvalidAudienceError:
        raise TokenInvalid("it was not issued for Countersign (audience)") from None
    except jwt.InvalidIssuerError:
        raise TokenInvalid("it was not issued by the identity provider (issuer)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenInvalid(f"it has no {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise TokenInvalid(f"it is not valid ({type(exc).__name__})") from None
    # However long the provider let it live (exp): a provider minting tokens for years by
    # mistake would have each stolen one honoured for years. PyJWT has read iat as a whole
    # number (and refused one in the future).
    if time.time() - int(claims["iat"]) > provider.max_token_age_seconds + LEEWAY_SECONDS:
        raise TokenInvalid(
            f"it was issued more than {provider.max_token_age_seconds} seconds ago "
            "(the provider's maximum token age)"
        )
    return claims


def user_of(provider: IdentityProvider, claims: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The user's id and roles in a verified token's claims, by the provider's claim names."""
    user_id = claims.get(provider.user_id_claim)
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    # The ids on_behalf_of may name: a claim may hold what no body could (NUL, an unpaired
    # surrogate), which the call's row and its audit event could not be stored with.
    if not is_user_id(user_id):
        raise TokenInvalid(
            f"its {provider.user_id_claim!r} claim is not a user id "
            f"(1 to {MAX_USER_ID_LENGTH} printable characters)"
        )
    # A claim of that very name first: providers that namespace custom claims name them by
    # a URL (https://example.com/roles), dots and all; else a dotted path into an object.
    found: Any = claims.get(provider.roles_claim)
    if found is None:
        found = claims
        for part in provider.roles_claim.split("."):
            found = found.get(part) if isinstance(found, dict) else None
    if found is None:
        return user_id, ()
    roles = found.split() if isinstance(found, str) else found
    if not isinstance(roles, list) or len(roles) > MAX_TOKEN_ROLES:
        raise TokenInvalid(f"its {provider.roles_claim!r} claim is not a list of roles")
    if not all(is_role(role) for role in roles):
        raise TokenInvalid(
            f"its {provider.roles_claim!r} claim holds something that is not a role "
            f"(text of 1 to {MAX_ROLE_LENGTH} characters)"
        )
    return user_id, tuple(dict.fromkeys(roles))


# The claims naming the user as a reviewer's account may be named: by its e-mail address, or
# by the name their sign-in gave it (accounts.oidc, OIDC_USERNAME_CLAIM's default).
ALIAS_CLAIMS = ("email", "preferred_username")
# Longer than any name an account can hold (an e-mail address, at most 254 characters): a
# longer claim cut to it can still match one, and nothing longer is kept on the call.
MAX_ALIAS_LENGTH = 254


def aliases_of(claims: dict[str, Any], user_id: str) -> tuple[str, ...]:
    """The other names a verified token gives its user (``ALIAS_CLAIMS``), folded as
    separation of duties compares names: a reviewer who signs in with a password is known by
    their username and e-mail only, not by the provider's ``sub`` a call names its user by.
    Only strings, cut to ``MAX_ALIAS_LENGTH``, without what could not be stored (NUL, an
    unpaired surrogate); a claim that is none of that is left out, never a reason to refuse
    the token (it was not asked for). Whether the provider verified the e-mail is not asked:
    a name too many only keeps someone from approving, never lets anyone approve."""
    found: list[str] = []
    for claim in ALIAS_CLAIMS:
        value = claims.get(claim)
        if not isinstance(value, str):
            continue
        name = folded(UNSTORABLE.sub("", value[:MAX_ALIAS_LENGTH]))[:MAX_ALIAS_LENGTH]
        if name and name != folded(user_id) and name not in found:
            found.append(name)
    return tuple(found)


# --- The provider's keys ------------------------------------------------------------------


def _signing_key(url: str, kid: str | None, alg: str) -> dict[str, Any]:
    """The published key that signs tokens with ``kid`` and ``alg``."""
    asked = time.monotonic()
    found = _pick(_keys(url, refresh=False), kid, alg)
    if found is None and kid is not None:
        # Perhaps the provider rotated its keys since they were fetched.
        found = _pick(_keys(url, refresh=True), kid, alg)
        if found is None and not _fetched_since(url, asked):
            # Not fetched again so soon (JWKS_MIN_REFRESH_SECONDS): nobody looked whether the
            # provider publishes the key now (a provider that signs with a key as soon as it
            # publishes it). A retry after the interval looks; refused for good, it would not.
            raise ProviderUnavailable(
                "its key is not among the provider's keys fetched moments ago, which are "
                "fetched again within seconds"
            )
    if found is None:
        if kid is None:
            raise TokenInvalid("it names no key (kid), and the provider has no single key for it")
        raise TokenInvalid("it is signed with a key the provider does not publish")
    return found


def _pick(keys: list[dict[str, Any]], kid: str | None, alg: str) -> dict[str, Any] | None:
    kty, crv = _KEY_TYPES.get(alg, _KEY_TYPES.get(alg[:2], ("", None)))
    fitting = [
        key
        for key in keys
        if key.get("kty") == kty
        and (crv is None or key.get("crv") == crv)
        and key.get("use", "sig") == "sig"
        # A key whose operations (RFC 7517's key_ops) leave out verifying is not for tokens.
        and ("key_ops" not in key or _verifies(key["key_ops"]))
        and key.get("alg", alg) == alg
        and (kid is None or key.get("kid") == kid)
    ]
    return fitting[0] if len(fitting) == 1 else None


def _verifies(key_ops: Any) -> bool:
    return isinstance(key_ops, list) and "verify" in key_ops


def _fetched_since(url: str, moment: float) -> bool:
    """Whether the provider's keys at ``url`` were fetched at or after ``moment``."""
    with _guard:
        known = _key_sets.get(url)
    return known is not None and known.fetched_at is not None and known.fetched_at >= moment


def _keys(url: str, *, refresh: bool) -> list[dict[str, Any]]:
    """The provider's current keys: cached, or fetched (see the module's docstring)."""
    cache_seconds = settings.JWKS_CACHE_SECONDS
    min_refresh = settings.JWKS_MIN_REFRESH_SECONDS
    with _guard:
        known = _key_sets.setdefault(url, _KeySet())
        lock = _fetching.setdefault(url, threading.Lock())
        # A fresh set is read without waiting for a fetch under way: that fetch (a token
        # naming a key not in the set, which any agent can send) may take as long as the
        # timeout, and this token would then be checked with the keys it has now anyway.
        fetched_at = known.fetched_at
        if not refresh and fetched_at is not None and time.monotonic() - fetched_at < cache_seconds:
            return known.keys
    with lock:  # one fetch per key set at a time; the others wait for its outcome
        now = time.monotonic()
        fresh = known.fetched_at is not None and now - known.fetched_at < cache_seconds
        if fresh and not refresh:
            return known.keys
        if now - known.asked_at < min_refresh:
            if known.failure:
                raise ProviderUnavailable(known.failure)
            if known.fetched_at is not None:
                # Fetched within the interval: kept that long even when the cache's own
                # lifetime is shorter (JWKS_CACHE_SECONDS at 0 fetched for every token).
                return known.keys
        try:
            known.keys = _fetch(url)
        except ProviderUnavailable as exc:
            known.failure = exc.reason
            raise
        finally:
            # The interval counts from the fetch's end: counted from its start, a fetch as
            # long as the interval (a provider that hangs until the timeout) had used it up,
            # and every request that waited for it fetched again in turn.
            known.asked_at = time.monotonic()
        known.fetched_at, known.failure = now, ""
        return known.keys


def _fetch(url: str) -> list[dict[str, Any]]:
    # The timeout bounds the whole fetch (connecting, the headers, the body), as an upstream
    # call's does: a provider or a proxy that trickles its answer would hold every request
    # verifying its tokens, all waiting for this fetch. A compressed answer is inflated a
    # bounded piece at a time. Plain http is allowed from this machine only
    # (``models.keys_over_tls``), so never through the environment's proxy: that would take
    # the fetch, in plain text, off this machine to whatever the proxy calls that address.
    try:
        fetched = bounded_http.get(
            url,
            headers={"Accept": "application/json"},
            timeout=settings.JWKS_TIMEOUT_SECONDS,
            limit=MAX_JWKS_BYTES,
            trust_env=urlsplit(url).scheme != "http",
        )
    except bounded_http.ProxyUnusable as exc:
        raise ProviderUnavailable(f"the provider's key set could not be fetched: {exc}") from None
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(
            f"the provider's key set could not be fetched ({type(exc).__name__})"
        ) from None
    if fetched.status != 200:
        raise ProviderUnavailable(f"the provider's key set answered HTTP {fetched.status}")
    if fetched.truncated:
        raise ProviderUnavailable("the provider's key set is too large")
    try:
        data = json.loads(fetched.body)
        # PyJWT's own reading of the set: it refuses one without a single usable key.
        jwt.PyJWKSet.from_dict(data)
    # RecursionError: JSON nested deeper than Python parses fits well within the size limit;
    # let through, it was a 500 for every request, and a failure never kept (``_keys``), so
    # each of them fetched the set again.
    except (jwt.PyJWKSetError, ValueError, TypeError, AttributeError, RecursionError):
        raise ProviderUnavailable("the provider's key set is not a JWKS with usable keys") from None
    return [key for key in data["keys"] if isinstance(key, dict)]
