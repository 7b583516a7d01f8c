"""Verified end users: tokens signed with keys generated here, checked against the JWKS a
real HTTP server publishes; every way a token can be wrong is refused, a provider that is
down is refused as retryable, and the keys are fetched once, not per call."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from django.test import override_settings

from tests.conftest import World
from tests.support.identity_provider import AUDIENCE, Provider, ProviderFactory, ec_key, rsa_key
from tools_registry import end_users, services, user_tokens
from tools_registry.end_users import Refused, identify
from tools_registry.models import Agent, IdentityProvider
from tools_registry.role_scopes import EndUser

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


@pytest.fixture(autouse=True)
def _no_cached_keys() -> Iterator[None]:
    user_tokens.forget_keys()
    yield
    user_tokens.forget_keys()


@pytest.fixture
def provider(identity_providers: ProviderFactory, world: World) -> Provider:
    """The organisation's provider, trusted by the world's agent to vouch for its users."""
    made = identity_providers()
    world.agent.user_roles_from = Agent.UserRoles.VERIFIED
    world.agent.identity_provider = made.row
    world.agent.save()
    return made


def refusal(agent: Agent, token: str, **named: object) -> Refused:
    with pytest.raises(Refused) as caught:
        identify(agent, on_behalf_of=named.get("on_behalf_of"), user_token=token)
    assert token not in caught.value.message, "a token never appears in an error"
    return caught.value


def test_a_genuine_token_names_the_user_and_their_roles(world: World, provider: Provider) -> None:
    token = provider.token("ada@example.com", roles=["support", "viewer", "support"])
    user = identify(world.agent, on_behalf_of=None, user_token=token)
    assert user == EndUser(id="ada@example.com", roles=("support", "viewer"), source="verified")


def test_an_elliptic_curve_key_verifies_too(
    world: World, identity_providers: ProviderFactory
) -> None:
    made = identity_providers(ec_key())
    world.agent.user_roles_from = Agent.UserRoles.VERIFIED
    world.agent.identity_provider = made.row
    world.agent.save()
    user = identify(world.agent, on_behalf_of="grace", user_token=made.token("grace", ["admin"]))
    assert (user.id, user.roles) == ("grace", ("admin",))


def test_the_claims_named_by_the_provider_are_read(world: World, provider: Provider) -> None:
    IdentityProvider.objects.filter(pk=provider.row.pk).update(
        user_id_claim="email", roles_claim="realm_access.roles"
    )
    world.agent.refresh_from_db()
    token = provider.token(
        "u-1", roles=None, email="ada@example.com", realm_access={"roles": ["billing"]}
    )
    user = identify(world.agent, on_behalf_of=None, user_token=token)
    assert (user.id, user.roles) == ("ada@example.com", ("billing",))


def test_the_keys_are_fetched_once_and_a_rotated_key_is_fetched_again(
    world: World, provider: Provider
) -> None:
    for _ in range(5):
        identify(world.agent, on_behalf_of=None, user_token=provider.token())
    assert provider.fetches == 1
    rotated = rsa_key()
    provider.publish(provider.keys[0], rotated)
    with override_settings(JWKS_MIN_REFRESH_SECONDS=0):
        user = identify(world.agent, on_behalf_of=None, user_token=provider.token(key=rotated))
    assert user.id == "ada"
    assert provider.fetches == 2


def test_made_up_key_ids_cost_the_provider_one_request_per_interval(
    world: World, provider: Provider
) -> None:
    stranger = rsa_key()
    with override_settings(JWKS_MIN_REFRESH_SECONDS=60):
        identify(world.agent, on_behalf_of=None, user_token=provider.token())
        for _ in range(5):
            refused = refusal(world.agent, provider.token(key=stranger))
            # Not looked for: the provider may have published it since (retryable).
            assert refused.code == end_users.PROVIDER_UNAVAILABLE
    assert provider.fetches == 1, "the keys were just fetched: no made-up id asks again"
    with override_settings(JWKS_MIN_REFRESH_SECONDS=0):
        refused = refusal(world.agent, provider.token(key=stranger))
        assert refused.code == end_users.USER_TOKEN_INVALID
        assert "does not publish" in refused.message
    assert provider.fetches == 2, "past the interval, an unknown key is looked for once"


def test_a_cache_shorter_than_the_refresh_interval_still_fetches_once_per_interval(
    world: World, provider: Provider
) -> None:
    """JWKS_CACHE_SECONDS at 0 (for "fast revocation") fetched the key set for every token,
    with no interval at all: a flood of calls was a flood of requests to the provider."""
    with override_settings(JWKS_CACHE_SECONDS=0, JWKS_MIN_REFRESH_SECONDS=60):
        for _ in range(5):
            identify(world.agent, on_behalf_of=None, user_token=provider.token())
    assert provider.fetches == 1
    with override_settings(JWKS_CACHE_SECONDS=0, JWKS_MIN_REFRESH_SECONDS=0):
        identify(world.agent, on_behalf_of=None, user_token=provider.token())
    assert provider.fetches == 2, "past the interval, the keys are fetched again"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "it has expired"),
        ("wrong key, same kid", "its signature does not verify"),
        ("unknown key", "a key the provider does not publish"),
        ("wrong issuer", "not issued by the identity provider"),
        ("wrong audience", "not issued for Countersign"),
        ("no expiry", "no 'exp' claim"),
        ("not yet valid", "not valid yet"),
        ("tampered roles", "its signature does not verify"),
        ("not a JWT", "not a well-formed JWT"),
        ("roles are not strings", "not a role"),
        ("no user id", "is not a user id"),
    ],
)
def test_a_token_that_does_not_prove_its_user_is_refused(
    world: World, provider: Provider, case: str, reason: str
) -> None:
    genuine = provider.keys[0]
    impostor = rsa_key(kid=genuine.kid)
    now = int(time.time())
    token = {
        "expired": lambda: provider.token(expires_in=-120),
        "wrong key, same kid": lambda: provider.token(key=impostor),
        "unknown key": lambda: provider.token(key=rsa_key()),
        "wrong issuer": lambda: provider.token(issuer="https://evil.example.com/"),
        "wrong audience": lambda: provider.token(audience="another-app"),
        "no expiry": lambda: jwt.encode(
            {"iss": provider.issuer, "aud": AUDIENCE, "sub": "ada"},
            genuine.private,
            algorithm="RS256",
            headers={"kid": genuine.kid},
        ),
        "not yet valid": lambda: provider.token(nbf=now + 600),
        "tampered roles": lambda: _with_payload(provider.token(roles=["viewer"]), roles=["admin"]),
        "not a JWT": lambda: "not.a.jwt",
        "roles are not strings": lambda: provider.token(roles=["viewer", 7]),
        "no user id": lambda: provider.token(sub=""),
    }[case]()
    refused = refusal(world.agent, token)
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert reason in refused.message


def test_an_unsigned_token_is_refused(world: World, provider: Provider) -> None:
    """``alg: none``: a token anyone could write."""
    token = _unsigned({"iss": provider.issuer, "aud": AUDIENCE, "sub": "ada", "roles": ["admin"]})
    refused = refusal(world.agent, token)
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert "'none'" in refused.message
    assert provider.fetches == 0, "refused before any key is even looked up"


def test_a_token_signed_with_hmac_and_the_public_key_is_refused(
    world: World, provider: Provider
) -> None:
    """The classic confusion: HS256 with the provider's public key (which anyone can fetch)
    as the "secret". Only the provider's public-key algorithms are accepted."""
    key = provider.keys[0]
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    token = _hmac_token(
        header,
        {"iss": provider.issuer, "aud": AUDIENCE, "sub": "ada", "exp": int(time.time()) + 300},
        key.public_pem(),
    )
    refused = refusal(world.agent, token)
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert "'HS256'" in refused.message


@pytest.mark.filterwarnings("ignore::jwt.InsecureKeyLengthWarning")
def test_a_token_signed_with_an_rsa_key_under_2048_bits_is_refused(
    world: World, identity_providers: ProviderFactory
) -> None:
    """PyJWT only warned of a 1024-bit key and verified with it: whoever factors a key that
    short (the provider's forgotten test key, an old one) names any user with any roles."""
    short = rsa_key(bits=1024)
    made = identity_providers(short)
    world.agent.user_roles_from = Agent.UserRoles.VERIFIED
    world.agent.identity_provider = made.row
    world.agent.save()
    refused = refusal(world.agent, made.token("ada", ["admin"], key=short))
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert "2048 bits" in refused.message


@pytest.mark.parametrize(
    "purpose",
    [{"use": "enc"}, {"key_ops": ["encrypt", "wrapKey"]}, {"key_ops": "verify"}],
    ids=["use-enc", "key-ops-encrypt", "key-ops-not-a-list"],
)
def test_a_key_the_provider_publishes_for_encryption_verifies_no_token(
    world: World, identity_providers: ProviderFactory, purpose: dict[str, object]
) -> None:
    """A key set says what each key is for, by ``use`` or by ``key_ops`` (RFC 7517): a
    key whose operations leave out verifying vouched for tokens all the same."""
    key = rsa_key()
    key.purpose = purpose
    made = identity_providers(key)
    world.agent.user_roles_from = Agent.UserRoles.VERIFIED
    world.agent.identity_provider = made.row
    world.agent.save()
    refused = refusal(world.agent, made.token(key=key))
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert "does not publish" in refused.message
    key.purpose = {"key_ops": ["verify"]}
    made.publish(key)
    user_tokens.forget_keys()
    assert identify(world.agent, on_behalf_of=None, user_token=made.token(key=key)).id == "ada"


def test_an_admin_cannot_accept_hmac_or_none(provider: Provider) -> None:
    for algorithms in (["HS256"], ["none"], ["RS256", "HS512"], []):
        provider.row.algorithms = algorithms
        with pytest.raises(services.IdentityProviderInvalid):
            services.save_identity_provider(provider=provider.row, changed_by=None)


def test_a_provider_that_is_down_is_retryable_and_nothing_is_accepted_unverified(
    world: World, provider: Provider
) -> None:
    provider.go_down()
    with override_settings(JWKS_MIN_REFRESH_SECONDS=0):
        refused = refusal(world.agent, provider.token())
        assert refused.code == end_users.PROVIDER_UNAVAILABLE
        assert "HTTP 503" in refused.message
        provider.go_down(False)
        assert identify(world.agent, on_behalf_of=None, user_token=provider.token()).id == "ada"


def test_a_provider_that_is_down_is_asked_at_most_once_per_interval(
    world: World, provider: Provider
) -> None:
    provider.go_down()
    for _ in range(4):
        assert refusal(world.agent, provider.token()).code == end_users.PROVIDER_UNAVAILABLE
    assert provider.fetches == 1


def test_a_provider_that_cannot_be_reached_is_retryable(world: World, provider: Provider) -> None:
    IdentityProvider.objects.filter(pk=provider.row.pk).update(
        jwks_url="http://127.0.0.1:9/nothing-listens-here/jwks.json"
    )
    world.agent.refresh_from_db()
    refused = refusal(world.agent, provider.token())
    assert refused.code == end_users.PROVIDER_UNAVAILABLE
    assert "could not be fetched" in refused.message


def test_a_token_for_an_agent_not_set_to_verify_is_refused_not_ignored(
    world: World, provider: Provider
) -> None:
    world.agent.user_roles_from = Agent.UserRoles.ASSERTED
    world.agent.save()
    refused = refusal(world.agent, provider.token())
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert "not set up to verify" in refused.message


def test_on_behalf_of_may_not_contradict_or_add_to_the_token(
    world: World, provider: Provider
) -> None:
    token = provider.token("ada", ["viewer"])
    other = refusal(world.agent, token, on_behalf_of="grace")
    assert other.code == end_users.INVALID_END_USER
    more = refusal(world.agent, token, on_behalf_of={"id": "ada", "roles": ["admin"]})
    assert more.code == end_users.ROLE_NOT_ASSERTABLE
    same = identify(world.agent, on_behalf_of="ada", user_token=token)
    assert same.roles == ("viewer",)


def test_a_huge_token_is_refused_unread(world: World, provider: Provider) -> None:
    refused = refusal(world.agent, "a" * (user_tokens.MAX_TOKEN_LENGTH + 1))
    assert "longer than" in refused.message
    assert provider.fetches == 0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, object]) -> str:
    claims = {"exp": int(time.time()) + 300, **claims}
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _with_payload(token: str, **changes: object) -> str:
    """The token with its claims changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return ".".join([header, _b64(json.dumps({**claims, **changes}).encode()), signature])


def _hmac_token(header: dict[str, object], claims: dict[str, object], secret: bytes) -> str:
    """HS256 by hand: PyJWT itself refuses to use a PEM public key as an HMAC secret."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def test_keys_on_this_machine_are_not_fetched_through_the_environments_proxy(
    world: World, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key set over plain http is allowed from this machine only, as nothing on the way
    can change it: an egress proxy in the environment (HTTP_PROXY, no NO_PROXY) would take
    the fetch off this machine, to whatever the proxy calls that address, in plain text."""
    impostor = rsa_key(kid=provider.keys[0].kid)
    asked: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = json.dumps({"keys": [impostor.public_jwk()]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        forged = provider.token("mallory", ["admin"], key=impostor)
        refused = refusal(world.agent, forged)
        assert "signature does not verify" in refused.message
        assert identify(world.agent, on_behalf_of=None, user_token=provider.token()).id == "ada"
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert asked == [] and provider.fetches == 1


def test_a_key_published_just_after_a_fetch_is_retryable_not_refused_for_good(
    world: World, provider: Provider
) -> None:
    """The provider publishes a new key and signs with it at once, seconds after the keys
    were fetched: within JWKS_MIN_REFRESH_SECONDS they are not fetched again, so nobody
    looked whether the key is published. That is "cannot be checked now" (503, retryable),
    not "signed with a key the provider does not publish" (401, for good); once the interval
    is over, the same token verifies."""
    with override_settings(JWKS_MIN_REFRESH_SECONDS=60):
        identify(world.agent, on_behalf_of=None, user_token=provider.token())
        rotated = rsa_key()
        provider.publish(provider.keys[0], rotated)
        token = provider.token("grace", ["support"], key=rotated)
        refused = refusal(world.agent, token)
        assert refused.code == end_users.PROVIDER_UNAVAILABLE, refused.message
    assert provider.fetches == 1
    with override_settings(JWKS_MIN_REFRESH_SECONDS=0):
        assert identify(world.agent, on_behalf_of=None, user_token=token).id == "grace"
    assert provider.fetches == 2


def test_a_token_is_refused_past_the_providers_maximum_age_whatever_its_expiry(
    world: World, provider: Provider
) -> None:
    """A provider set by mistake to mint tokens for ten years: each one, stolen, was
    honoured for ten years. Past the provider's maximum age after its iat (a day by
    default) it is refused, though it has not expired."""
    now = int(time.time())
    ten_years = 10 * 365 * 24 * 3600
    old = provider.token(iat=now - 2 * 24 * 3600, expires_in=ten_years)
    refused = refusal(world.agent, old)
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert "issued more than 86400 seconds ago" in refused.message

    fresh = provider.token(expires_in=ten_years)
    assert identify(world.agent, on_behalf_of=None, user_token=fresh).id == "ada"

    # The admin sets it per provider: an hour, and a token of two hours ago is refused.
    IdentityProvider.objects.filter(pk=provider.row.pk).update(max_token_age_seconds=3600)
    world.agent.refresh_from_db()
    refused = refusal(world.agent, provider.token(iat=now - 2 * 3600))
    assert "issued more than 3600 seconds ago" in refused.message


def test_a_token_without_an_issue_time_is_refused(world: World, provider: Provider) -> None:
    """Its age could not be known, so no maximum age could hold it."""
    key = provider.keys[0]
    token = jwt.encode(
        {"iss": provider.issuer, "aud": AUDIENCE, "sub": "ada", "exp": int(time.time()) + 300},
        key.private,
        algorithm=key.alg,
        headers={"kid": key.kid},
    )
    refused = refusal(world.agent, token)
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert "has no 'iat' claim" in refused.message


def test_a_token_issued_in_the_future_is_refused(world: World, provider: Provider) -> None:
    refused = refusal(world.agent, provider.token(iat=int(time.time()) + 3600))
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert "not valid yet" in refused.message


def test_a_maximum_age_under_a_minute_is_refused_by_the_service(provider: Provider) -> None:
    provider.row.max_token_age_seconds = 5
    with pytest.raises(services.IdentityProviderInvalid) as caught:
        services.save_identity_provider(provider=provider.row, changed_by=None)
    assert "max_token_age_seconds" in caught.value.message_dict


def test_a_token_with_a_critical_header_extension_is_refused(
    world: World, provider: Provider
) -> None:
    """RFC 7515: an extension listed in crit that the recipient does not understand makes
    the token invalid (PyJWT before 2.12 ignored it: CVE-2026-32597)."""
    token = provider.token(headers={"crit": ["x-policy"], "x-policy": "require-mfa"})
    refused = refusal(world.agent, token)
    assert refused.code == end_users.USER_TOKEN_INVALID


def test_the_keys_a_token_points_at_are_never_fetched(
    world: World, provider: Provider, identity_providers: ProviderFactory
) -> None:
    """jku and x5u name where the token's key is: whoever wrote the token. Only the
    provider's own JWKS URL vouches for a token."""
    elsewhere = identity_providers()  # keys of someone else's, served by a real server
    attacker_key = elsewhere.keys[0]
    token = provider.token(
        key=attacker_key,
        headers={"jku": elsewhere.jwks_url, "x5u": elsewhere.jwks_url},
    )
    refused = refusal(world.agent, token)
    assert refused.code == end_users.USER_TOKEN_INVALID
    assert elsewhere.fetches == 0
