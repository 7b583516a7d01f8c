"""Single sign-on with OpenID Connect (mozilla-django-oidc), teams taken from a claim.

The provider is the source of truth for the teams named in ``OIDC_TEAM_MAP``: at every SSO
sign-in a person joins the mapped teams their teams claim lists and leaves the mapped teams
it no longer lists, so someone removed from a team at the provider loses its grants at
their next sign-in. Teams that are not mapped are left as the admin set them. Every change
is audited (``user.access_changed``, and ``auth.groups_changed`` from the membership itself).

A person is found by their provider's ``sub`` (``SsoIdentity``), linked when the account is
made at their first sign-in (or by ``manage.py link_sso``). The username claim only names
a new account: a sign-in whose name belongs to an account that is not linked to its ``sub``
(a local admin, someone who left the company) is refused, not let in as that account.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView
from requests.auth import HTTPBasicAuth

from accounts import sessions
from accounts.models import SsoIdentity
from audit.log import record
from tools_registry.services.grants import access_of, hold_reviews_of, record_access_change

logger = logging.getLogger(__name__)

# The provider's clock against ours.
PROVIDER_CLOCK_SKEW_SECONDS = 60


def teams_from_claims(claims: dict[str, Any]) -> set[str]:
    """The Countersign teams the provider's claim puts this person in."""
    raw = claims.get(settings.OIDC_TEAMS_CLAIM) or []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return set()  # a number, an object: no team a person could be put in by it
    mapping: dict[str, str] = settings.OIDC_TEAM_MAP
    return {mapping[value] for value in raw if isinstance(value, str) and value in mapping}


@transaction.atomic
def sync_teams(*, user: Any, claims: dict[str, Any], before: dict[str, Any] | None = None) -> None:
    """Set the person's mapped teams to what the claim says; audit what changed since
    ``before`` (``access_of`` the person before this sign-in changed them; now if not given)."""
    managed = set(settings.OIDC_TEAM_MAP.values())
    wanted = teams_from_claims(claims)
    if before is None:
        before = access_of(user, groups=user.groups.all(), permissions=user.user_permissions.all())
    current = set(user.groups.filter(name__in=managed).values_list("name", flat=True))
    existing = {g.name: g for g in Group.objects.filter(name__in=managed)}
    for name in sorted(wanted - existing.keys()):
        # A mapped team must be set up (with its permissions) by an admin first.
        logger.warning("OIDC_TEAM_MAP names team %r, which does not exist", name)
    joining = [existing[n] for n in sorted((wanted - current) & existing.keys())]
    leaving = [existing[n] for n in sorted((current - wanted) & existing.keys())]
    if leaving:
        # Out of a team, the person's approvals it carried stop counting: a verdict or the
        # quorum sweep counting them finishes first (``hold_reviews_of``).
        hold_reviews_of(users=[user])
    if joining:
        user.groups.add(*joining)
    if leaving:
        user.groups.remove(*leaving)
    record_access_change(user=user, before=before, changed_by=None)


def _subject(claims: dict[str, Any]) -> str:
    return str(claims.get("sub") or "").strip()


def _username(claims: dict[str, Any]) -> str:
    return str(claims.get(settings.OIDC_USERNAME_CLAIM) or "").strip()


def _longest(model: Any, field: str) -> int | None:
    return getattr(model._meta.get_field(field), "max_length", None)


def _epoch_seconds(value: Any) -> float | None:
    """An ID token's time claim, if it is one a date can hold: a provider that gives it in
    milliseconds (a year past 9999) or as infinity says nothing usable, not a 500."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        datetime.fromtimestamp(value, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return value


def _provider_request_options(url: str) -> dict[str, Any]:
    """What mozilla-django-oidc sends each request to the provider with (but the timeout),
    and no redirects. Plain http is allowed on this machine only (``provider_endpoint``), so
    never through a proxy, the environment's or ``OIDC_PROXY``: the client secret, the code,
    the claims and the keys would leave this machine in plain text, for whatever the proxy
    calls that address to answer (``no_proxy`` here is requests' own "bypass them all")."""
    plain = urlsplit(url).scheme == "http"
    return {
        "allow_redirects": False,
        "verify": OIDCAuthenticationBackend.get_settings("OIDC_VERIFY_SSL", True),
        "proxies": {"no_proxy": "*"}
        if plain
        else OIDCAuthenticationBackend.get_settings("OIDC_PROXY", None),
    }


# The media types (JWT "typ") of tokens that are not ID tokens: an access token (RFC 9068),
# a logout token. A provider that marks them so says they prove nothing about a sign-in.
_NOT_ID_TOKEN_TYPES = {"at+jwt", "logout+jwt"}


def _check_id_token(id_token: str, payload: dict[str, Any]) -> None:
    """What an ID token carries that a signed user-info answer need not (both are verified
    by ``_verify_jws``, so these are checked here, where the token is known to be one):
    when it expires and when it was issued (OpenID Connect Core 3.1.3.7). PyJWT checks exp
    and iat only when present: an ID token without exp proved a sign-in for good, one
    stolen from a log or a browser's history years on."""
    for claim in ("exp", "iat"):
        if _epoch_seconds(payload.get(claim)) is None:
            raise SuspiciousOperation(f"the ID token has no {claim} a date can hold")
    if payload["iat"] > time.time() + PROVIDER_CLOCK_SKEW_SECONDS:
        # PyJWT refuses it too (2.15 does): kept here, whichever PyJWT is installed.
        raise SuspiciousOperation("the ID token was issued in the future")
    header = jwt.get_unverified_header(id_token)  # verified with the token (_verify_jws)
    kind = str(header.get("typ") or "").lower().removeprefix("application/")
    if kind in _NOT_ID_TOKEN_TYPES:
        raise SuspiciousOperation("the token is not an ID token (typ)")


class TeamMappingOIDCBackend(OIDCAuthenticationBackend):
    """Finds people by their ``sub`` at the provider, creates them (named by
    ``OIDC_USERNAME_CLAIM``, with no usable password) at their first sign-in, and syncs
    their teams."""

    def authenticate(self, request: Any, **kwargs: Any) -> Any:
        """None (a failed sign-in, audited as one, and the sign-in page again) when the
        provider refuses the code: a reused, expired or forged one (the back button, a
        double click) is the provider's 400, not a 500 here; so is an answer of JSON nested
        past what Python reads."""
        try:
            return super().authenticate(request, **kwargs)
        except requests.RequestException as exc:
            logger.warning("SSO sign-in refused by the provider: %s", type(exc).__name__)
            return None
        except jwt.PyJWTError as exc:
            # An ID token expired, not yet valid or without a claim it must have: PyJWT's
            # refusals but DecodeError (the library's 400) went through the callback as a 500.
            # So did a key it refuses to verify with (too short, or no key at all): those
            # are no InvalidTokenError.
            logger.warning("SSO sign-in refused: the ID token is not valid: %s", exc)
            return None
        except SuspiciousOperation as exc:
            # An ID token no published signing key verifies, or signed with another
            # algorithm, or with another nonce: the library raises these from the token's
            # check, outside the part it catches, and the callback answered a bare 400.
            logger.warning("SSO sign-in refused: %s", exc)
            return None
        except RecursionError:
            # An answer (token, user info, key set) nested deeper than Python's JSON reader
            # goes fits in a small body; it is no ValueError, so requests does not make it
            # a RequestException: the provider's failure, not a 500.
            logger.warning("SSO sign-in refused: the provider's answer is nested too deep")
            return None

    def _verify_jws(self, payload: Any, key: Any) -> Any:
        """As mozilla-django-oidc's, but the provider's clock may be ahead of or behind ours
        by ``PROVIDER_CLOCK_SKEW_SECONDS``: with none, a provider a second ahead issued ID
        tokens PyJWT calls not yet valid, and nobody could sign in."""
        algorithm = jwt.get_unverified_header(payload).get("alg")
        if algorithm != self.OIDC_RP_SIGN_ALGO:
            raise SuspiciousOperation("the ID token is not signed with OIDC_RP_SIGN_ALGO")
        return jwt.decode(
            payload,
            key,
            algorithms=[algorithm],
            leeway=PROVIDER_CLOCK_SKEW_SECONDS,
            # The ID token's audience is checked where it is known to be one
            # (get_or_create_user): a signed user-info answer need not name one. PyJWT only
            # warns of an RSA key under 2048 bits, and verifies with it: a key that short can
            # be factored, and whoever did could sign anyone in, an admin's teams and all.
            options={"verify_aud": False, "enforce_minimum_key_length": True},
        )

    def get_token(self, payload: dict[str, Any]) -> Any:
        """As mozilla-django-oidc's, but a redirect is not followed: requests sends a 307 or
        308 on with the same body (the client secret, the code) to whatever host it names.
        Any answer but 200 is the provider's refusal."""
        auth = None
        if self.get_settings("OIDC_TOKEN_USE_BASIC_AUTH", False):
            auth = HTTPBasicAuth(payload["client_id"], payload.pop("client_secret"))
        response = requests.post(
            self.OIDC_OP_TOKEN_ENDPOINT,
            data=payload,
            auth=auth,
            timeout=settings.OIDC_TIMEOUT,
            **_provider_request_options(self.OIDC_OP_TOKEN_ENDPOINT),
        )
        self.raise_token_response_error(response)
        return response.json()

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        """As mozilla-django-oidc's, but a redirect is not followed: the claims (the teams
        among them) come from the endpoint named, not a host its answer points at."""
        response = requests.get(
            self.OIDC_OP_USER_ENDPOINT,
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=settings.OIDC_TIMEOUT,
            **_provider_request_options(self.OIDC_OP_USER_ENDPOINT),
        )
        if response.status_code != 200:  # a redirect too
            raise requests.HTTPError(
                f"the user-info endpoint answered {response.status_code}", response=response
            )
        if response.headers.get("content-type", "").lower().startswith("application/jwt"):
            claims = self.verify_token(response.text)
        else:
            claims = response.json()
        # OpenID Connect uses the user info only when it is about the person the ID token is
        # (the same sub): its name and teams decide who signs in, and with what grants.
        if not isinstance(claims, dict) or claims.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("the user info is not about the ID token's person")
        return claims

    def retrieve_matching_jwk(self, token: Any) -> Any:
        """As mozilla-django-oidc's, but a redirect is not followed and the fetch has our
        timeout: the keys that decide which ID tokens are genuine come from the endpoint
        named, not from a host its answer points at. Any answer but 200, or one that is no
        key set, is the provider's failure (a failed sign-in)."""
        response = requests.get(
            self.OIDC_OP_JWKS_ENDPOINT,
            timeout=settings.OIDC_TIMEOUT,
            **_provider_request_options(self.OIDC_OP_JWKS_ENDPOINT),
        )
        body = response.json() if response.status_code == 200 else None
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list):
            raise requests.HTTPError(
                f"the key set endpoint answered {response.status_code} without keys",
                response=response,
            )
        header = jwt.get_unverified_header(token)
        # The library's matching, kept: the key id, and the algorithm when the key names one
        # (PyJWKClient would take the first key of an id, whatever its algorithm).
        match = None
        for key in keys:
            if not isinstance(key, dict):
                continue
            if self.get_settings("OIDC_VERIFY_KID", True) and key.get("kid") != header.get("kid"):
                continue
            if "alg" in key and key["alg"] != header.get("alg"):
                continue
            # Nor a key published for encryption (use, or RFC 7517's key_ops): a key set may
            # hold one under the signing key's id, and the last key of an id was taken.
            if key.get("use", "sig") != "sig":
                continue
            if "key_ops" in key and (
                not isinstance(key["key_ops"], list) or "verify" not in key["key_ops"]
            ):
                continue
            match = key
        if match is None:
            raise SuspiciousOperation("Could not find a valid JWKS.")
        return jwt.PyJWK(match)

    def get_user(self, user_id: Any) -> Any:
        """The session's person, as ModelBackend finds them: not once deactivated.
        mozilla-django-oidc returns any account, so a session made through the provider
        outlived its person's deactivation."""
        user = super().get_user(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        """A sub and a name, and nothing an account cannot hold: at many providers people
        choose their name, and one too long (or with a NUL) was a 500, not a refusal."""
        people = get_user_model()
        limited = [
            (_subject(claims), _longest(SsoIdentity, "subject")),
            (_username(claims), _longest(people, people.USERNAME_FIELD)),
            (str(claims.get("email") or ""), _longest(people, "email")),
        ]
        names = [str(claims.get(claim) or "") for claim in ("given_name", "family_name")]
        return (
            bool(_subject(claims))
            and bool(_username(claims))
            and all(limit is None or len(text) <= limit for text, limit in limited)
            and not any("\x00" in text for text in [*(t for t, _ in limited), *names])
        )

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        # The ID token proves who signs in to the application it names (aud, and azp when
        # given): mozilla-django-oidc checks neither, so one issued to another application
        # at the same provider signed its person in here.
        audience = payload.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or self.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("the ID token was issued to another application")
        if payload.get("azp", self.OIDC_RP_CLIENT_ID) != self.OIDC_RP_CLIENT_ID:
            raise SuspiciousOperation("the ID token was issued to another application")
        # And by the provider it names (iss, compared exactly, as OpenID Connect asks): keys
        # a JWKS endpoint serves for more than one issuer (a tenant's, another realm's) sign
        # ID tokens that prove nothing here. OIDC_OP_ISSUER is required at start
        # (config.settings); unset all the same (a test's settings), nothing matches it.
        if not settings.OIDC_OP_ISSUER or payload.get("iss") != settings.OIDC_OP_ISSUER:
            raise SuspiciousOperation("the ID token was issued by another provider")
        _check_id_token(id_token, payload)
        # When the provider last had the person sign in (the verified ID token's auth_time):
        # a re-authentication counts only if that is after it began (SignInCallbackView).
        signed_in = _epoch_seconds(payload.get("auth_time"))
        self.request.session[AUTH_TIME_KEY] = signed_in
        # And for the sign-in this request makes (approvals.reauth.on_login): the session
        # may be flushed before it is told.
        setattr(self.request, _SIGN_IN_ATTR, signed_in)
        return super().get_or_create_user(access_token, id_token, payload)

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        people = get_user_model()._default_manager
        linked = people.filter(sso_identity__subject=_subject(claims))
        if linked.exists():
            return linked
        username = _username(claims)
        if people.filter(**{get_user_model().USERNAME_FIELD: username}).exists():
            # The name is taken by an account this sign-in is not linked to: letting it in
            # would hand that account (an admin's, say) to whoever the provider lets
            # choose the name. An admin links it on purpose with manage.py link_sso.
            record(
                action="auth.sso_refused",
                outcome="name_taken",
                data={"username": username, "sub": _subject(claims)},
                people=("username",),  # an account's name (the provider's sub is masked)
            )
            logger.warning("SSO sign-in refused: the account %r is not linked to it", username)
            raise SuspiciousOperation("the name belongs to an account not linked to this sign-in")
        return people.none()

    def create_user(self, claims: dict[str, Any]) -> Any:
        """The person's account, made at their first sign-in. Two sign-ins finishing at once
        (two tabs) both found none: the second's insert waited for the first's and failed
        on the name. It takes what a sign-in a moment later finds: the account the first
        made for the same sub, or the refusal of a name linked to another person."""
        try:
            return self._new_account(claims)
        except IntegrityError:
            found = self.filter_users_by_claims(claims)
            if len(found) != 1:
                raise
            return self.update_user(found[0], claims)

    @transaction.atomic
    def _new_account(self, claims: dict[str, Any]) -> Any:
        user_model = get_user_model()
        user = user_model._default_manager.create_user(
            **{user_model.USERNAME_FIELD: str(claims[settings.OIDC_USERNAME_CLAIM]).strip()},
            email=str(claims.get("email") or ""),
            first_name=str(claims.get("given_name") or "")[:150],
            last_name=str(claims.get("family_name") or "")[:150],
        )
        user.set_unusable_password()
        user.save(update_fields=["password"])
        SsoIdentity.objects.create(user=user, subject=_subject(claims))
        record(
            action="auth.sso_user_created",
            actor=user,
            outcome="ok",
            data={"sub": _subject(claims)},
        )
        sync_teams(user=user, claims=claims)
        return user

    @transaction.atomic
    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        if not user.is_active:
            # A deactivated person stays out, whatever the provider says.
            return None
        # Read before the e-mail changes: separation of duties knows the person an agent acts
        # for by it, so a new one from the provider is audited with the teams.
        before = access_of(user, groups=user.groups.all(), permissions=user.user_permissions.all())
        email = str(claims.get("email") or "")
        if email and email != user.email:
            user.email = email
            user.save(update_fields=["email"])
        sync_teams(user=user, claims=claims, before=before)
        return user


@transaction.atomic
def link_identity(*, user: Any, subject: str) -> None:
    """Let the provider's ``subject`` sign in as ``user`` from now on (replacing any earlier
    link of either); audited. For an account made before SSO, or a person whose account
    should survive a move to another provider. The accounts a link leaves are signed out
    everywhere: the one the subject opened until now, and ``user`` if it had another
    subject. Their sessions signed in through the provider stayed signed in, held by
    someone the link no longer lets in."""
    subject = subject.strip()
    if not subject:
        raise ValueError("the subject (the provider's sub claim) is empty")
    longest = _longest(SsoIdentity, "subject")
    if longest is not None and len(subject) > longest:
        raise ValueError(f"the subject is at most {longest} characters, as OpenID Connect's are")
    before = SsoIdentity.objects.filter(user=user).values_list("subject", flat=True).first()
    moved = SsoIdentity.objects.filter(subject=subject).exclude(user=user).select_related("user")
    left = [identity.user for identity in moved]
    if before is not None and before != subject:
        left.append(user)
    moved.delete()
    SsoIdentity.objects.update_or_create(user=user, defaults={"subject": subject})
    for person in left:
        sessions.sign_out_everywhere(person)
    record(
        action="auth.sso_linked",
        actor=None,
        outcome="ok",
        data={"username": user.get_username(), "sub": subject, "replaced": before or ""},
        people=("username",),
    )


# In the session: when a re-authentication through the provider began, and when the provider
# says the person last signed in there (the ID token's auth_time), both in epoch seconds.
REAUTH_STARTED_KEY = "countersign.sso_reauth_started"
AUTH_TIME_KEY = "countersign.sso_auth_time"
# On the request of a sign-in through the provider: that auth_time (None if it gave none).
_SIGN_IN_ATTR = "countersign_sso_auth_time"


def through_provider(request: HttpRequest) -> tuple[bool, float | None]:
    """Whether the sign-in this request makes is through the provider, and when the provider
    says the person signed in there: it may have passed on a session it held for hours."""
    return hasattr(request, _SIGN_IN_ATTR), getattr(request, _SIGN_IN_ATTR, None)


class SignInRequestView(OIDCAuthenticationRequestView):
    """Sends the person to the provider. Asked from the re-authentication page
    (``?reauthenticate=1``), it asks the provider to have them sign in again (``prompt=login``,
    ``max_age=0``) rather than pass on a session it already holds, and notes when it asked."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if request.GET.get("reauthenticate"):
            request.session[REAUTH_STARTED_KEY] = time.time()
        return super().get(request)

    def get_extra_params(self, request: HttpRequest) -> dict[str, str]:
        params = dict(super().get_extra_params(request))
        if request.GET.get("reauthenticate"):
            params.update(prompt="login", max_age="0")
        return params


class SignInCallbackView(OIDCAuthenticationCallbackView):
    """The provider's answer. mozilla-django-oidc skips Django's sign-in when the person
    coming back is the session's own (a refresh), which left a re-authentication as old as
    before and the re-authentication page asking without end. Such a return is a new
    sign-in (the session stamped by ``approvals.reauth.on_login``, audited as ``auth.login``)
    only if a re-authentication was asked for and the provider says the person signed in
    since (``auth_time``): a provider that passed on a session it held (the parameters
    dropped on the way, or not honoured) does not make the sign-in recent."""

    def get(self, request: HttpRequest) -> HttpResponse:
        """mozilla-django-oidc signs the person out at any error answer: an answer to no
        sign-in this browser began (a link on another site, sent with the session cookie)
        is only a failed sign-in, or anyone could sign reviewers out with a GET."""
        if request.GET.get("error") and request.GET.get("state") not in request.session.get(
            "oidc_states", {}
        ):
            return self.login_failure()
        return super().get(request)

    def login_success(self) -> HttpResponse:
        session = self.request.session
        started, signed_in = session.pop(REAUTH_STARTED_KEY, None), session.pop(AUTH_TIME_KEY, None)
        person = self.request.user
        if (
            person.is_authenticated
            and person == self.user
            and isinstance(started, int | float)
            and isinstance(signed_in, int | float)
            and signed_in >= started - PROVIDER_CLOCK_SKEW_SECONDS
        ):
            auth.login(self.request, self.user)
        return super().login_success()
