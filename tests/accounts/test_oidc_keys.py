"""Which of the provider's published keys may vouch for an ID token: a sign-in through the
callback, with the provider's token and key set endpoints a real HTTP server of the test's
own, so each test chooses the keys it publishes and the key the ID token is signed with."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.test import Client, override_settings

from tests.conftest import World
from tests.support.upstreams.raw_http import RawHttpServer, reply

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

CLIENT_ID = "countersign-keys"


class KeyedProvider:
    """A provider's token and key set endpoints: it signs the ID token with ``signer`` and
    publishes ``published`` (public JWKs)."""

    def __init__(self) -> None:
        self.signer: Any = None
        self.kid = "signing"
        self.published: list[dict[str, Any]] = []
        self.nonce = ""
        # The ID token's claims and header changed (a claim set to None is left out), and
        # whether the user info is a signed JWT (of the person's sub and name only).
        self.claims: dict[str, Any] = {}
        self.headers: dict[str, Any] = {}
        self.signed_user_info = False
        self.server = RawHttpServer(self.answer, gets=True)
        self.issuer = self.server.url

    def answer(self, handler: Any, body: bytes) -> None:
        if handler.path.startswith("/jwks"):
            reply(handler, 200, {"keys": self.published})
            return
        if handler.path.startswith("/userinfo"):
            info = {"sub": "sub-erin", "preferred_username": "erin"}
            if self.signed_user_info:
                signed = jwt.encode(info, self.signer, algorithm="RS256", headers={"kid": self.kid})
                reply(handler, 200, signed.encode(), ctype="application/jwt")
            else:
                reply(handler, 200, info)
            return
        now = int(time.time())
        claims = {
            "iss": self.issuer, "aud": CLIENT_ID, "sub": "sub-erin", "iat": now,
            "exp": now + 300, "nonce": self.nonce, "preferred_username": "erin",
        }  # fmt: skip
        claims = {k: v for k, v in {**claims, **self.claims}.items() if v is not None}
        headers = {"kid": self.kid, **self.headers}
        id_token = jwt.encode(claims, self.signer, algorithm="RS256", headers=headers)
        reply(handler, 200, {"id_token": id_token, "access_token": "at", "token_type": "Bearer"})

    def settings(self) -> dict[str, Any]:
        return {
            "OIDC_ENABLED": True,
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": "secret",
            "OIDC_OP_AUTHORIZATION_ENDPOINT": f"{self.server.url}/authorize",
            "OIDC_OP_TOKEN_ENDPOINT": f"{self.server.url}/token",
            "OIDC_OP_USER_ENDPOINT": f"{self.server.url}/userinfo",
            "OIDC_OP_JWKS_ENDPOINT": f"{self.server.url}/jwks",
            "OIDC_OP_ISSUER": self.issuer,
            "OIDC_RP_SIGN_ALGO": "RS256",
            "AUTHENTICATION_BACKENDS": [
                *settings.AUTHENTICATION_BACKENDS,
                "accounts.oidc.TeamMappingOIDCBackend",
            ],
        }


@pytest.fixture
def keyed() -> Iterator[KeyedProvider]:
    provider = KeyedProvider()
    try:
        with override_settings(**provider.settings()):
            yield provider
    finally:
        provider.server.close()


def rsa_private(bits: int = 2048) -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_jwk(private: Any, **fields: Any) -> dict[str, Any]:
    return {**jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), **fields}


def sign_in(provider: KeyedProvider) -> tuple[Client, Any]:
    """Begin a sign-in, then come back to the callback with a code, as the browser does
    once the provider let the person in; the ID token carries the nonce asked for."""
    client = Client(raise_request_exception=False)
    start = client.get("/oidc/authenticate/?next=/audit/")
    query = parse_qs(urlsplit(start["Location"]).query)
    provider.nonce = query.get("nonce", [""])[0]
    return client, client.get(f"/oidc/callback/?code=the-code&state={query['state'][0]}")


def test_a_key_of_the_provider_signs_the_person_in(world: World, keyed: KeyedProvider) -> None:
    """The harness itself: a published signing key and its ID token make a sign-in."""
    keyed.signer = rsa_private()
    keyed.published = [public_jwk(keyed.signer, kid=keyed.kid, use="sig", alg="RS256")]
    client, landed = sign_in(keyed)
    assert landed.status_code == 302 and landed["Location"] == "/audit/"
    assert "_auth_user_id" in client.session


@pytest.mark.filterwarnings("ignore::jwt.InsecureKeyLengthWarning")
def test_an_rsa_key_under_2048_bits_signs_nobody_in(world: World, keyed: KeyedProvider) -> None:
    """PyJWT only warned of a 1024-bit key and verified with it: whoever factors a key that
    short signs in anyone they like, an admin's teams and all."""
    keyed.signer = rsa_private(1024)
    keyed.published = [public_jwk(keyed.signer, kid=keyed.kid, use="sig", alg="RS256")]
    client, landed = sign_in(keyed)
    assert landed.status_code == 302 and landed["Location"] == "/login/?sso=failed"
    assert "_auth_user_id" not in client.session


def test_an_encryption_key_under_the_signing_keys_id_is_not_taken_for_it(
    world: World, keyed: KeyedProvider
) -> None:
    """The last key of the token's ``kid`` was taken, whatever it was published for: a key
    set listing an encryption key after the signing key of the same id signed nobody in."""
    keyed.signer = rsa_private()
    keyed.published = [
        public_jwk(keyed.signer, kid=keyed.kid, use="sig"),
        public_jwk(rsa_private(), kid=keyed.kid, use="enc"),
        public_jwk(rsa_private(), kid=keyed.kid, key_ops=["encrypt", "wrapKey"]),
    ]
    client, landed = sign_in(keyed)
    assert landed.status_code == 302 and landed["Location"] == "/audit/"
    assert "_auth_user_id" in client.session


@pytest.mark.parametrize("fields", [{"use": "enc"}, {"key_ops": ["encrypt"]}], ids=str)
def test_a_key_published_for_encryption_verifies_no_id_token(
    world: World, keyed: KeyedProvider, fields: dict[str, Any]
) -> None:
    keyed.signer = rsa_private()
    keyed.published = [public_jwk(keyed.signer, kid=keyed.kid, **fields)]
    client, landed = sign_in(keyed)
    assert landed.status_code == 302 and landed["Location"] == "/login/?sso=failed"
    assert "_auth_user_id" not in client.session


def signing(provider: KeyedProvider) -> None:
    provider.signer = rsa_private()
    provider.published = [public_jwk(provider.signer, kid=provider.kid, use="sig", alg="RS256")]


def refused(client: Client, landed: Any) -> bool:
    return (
        landed.status_code == 302
        and landed["Location"] == "/login/?sso=failed"
        and "_auth_user_id" not in client.session
    )


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_an_id_token_without_its_times_signs_nobody_in(
    world: World, keyed: KeyedProvider, claim: str
) -> None:
    """OpenID Connect requires both (Core 3.1.3.7); PyJWT checks each only when present,
    and the library's check is shared with signed user info, which need not carry them: an
    ID token without exp proved a sign-in for good."""
    signing(keyed)
    keyed.claims = {claim: None}
    assert refused(*sign_in(keyed))


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_an_id_token_whose_time_is_no_number_signs_nobody_in(
    world: World, keyed: KeyedProvider, claim: str
) -> None:
    signing(keyed)
    keyed.claims = {claim: "soon"}
    assert refused(*sign_in(keyed))


def test_an_id_token_issued_far_in_the_future_signs_nobody_in(
    world: World, keyed: KeyedProvider
) -> None:
    signing(keyed)
    keyed.claims = {"iat": int(time.time()) + 24 * 3600, "exp": int(time.time()) + 25 * 3600}
    assert refused(*sign_in(keyed))


def test_signed_user_info_without_times_still_signs_the_person_in(
    world: World, keyed: KeyedProvider
) -> None:
    """The checks of an ID token's times are the ID token's only: a signed user-info answer
    (application/jwt) carries no exp or iat, and is verified by the same key check."""
    signing(keyed)
    keyed.signed_user_info = True
    client, landed = sign_in(keyed)
    assert landed.status_code == 302 and landed["Location"] == "/audit/"
    assert "_auth_user_id" in client.session


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+JWT", "logout+jwt"])
def test_a_token_the_provider_marks_as_no_id_token_signs_nobody_in(
    world: World, keyed: KeyedProvider, typ: str
) -> None:
    """An access token (RFC 9068 marks it at+jwt) with the client's audience proves access
    was granted, not who signed in."""
    signing(keyed)
    keyed.headers = {"typ": typ}
    assert refused(*sign_in(keyed))


def test_an_id_token_marked_as_a_jwt_signs_the_person_in(
    world: World, keyed: KeyedProvider
) -> None:
    signing(keyed)
    keyed.headers = {"typ": "JWT"}
    client, landed = sign_in(keyed)
    assert landed.status_code == 302 and landed["Location"] == "/audit/"
    assert "_auth_user_id" in client.session


def test_an_id_token_with_a_critical_header_extension_signs_nobody_in(
    world: World, keyed: KeyedProvider
) -> None:
    """RFC 7515: an extension listed in crit that is not understood makes the token
    invalid (PyJWT before 2.12 ignored it: CVE-2026-32597)."""
    signing(keyed)
    keyed.headers = {"crit": ["x-policy"], "x-policy": "require-mfa"}
    assert refused(*sign_in(keyed))


def test_the_keys_an_id_token_points_at_are_never_fetched(
    world: World, keyed: KeyedProvider
) -> None:
    """jku and x5u name where the token's key is: whoever wrote the token. Only the
    provider's JWKS endpoint vouches for an ID token."""
    attacker = rsa_private()
    asked: list[str] = []

    def attackers_keys(handler: Any, _: bytes) -> None:
        asked.append(handler.path)
        reply(handler, 200, {"keys": [public_jwk(attacker, kid="theirs", use="sig")]})

    elsewhere = RawHttpServer(attackers_keys, gets=True)
    try:
        keyed.published = [public_jwk(rsa_private(), kid=keyed.kid, use="sig", alg="RS256")]
        keyed.signer, keyed.kid = attacker, "theirs"
        keyed.headers = {"jku": f"{elsewhere.url}/jwks", "x5u": f"{elsewhere.url}/cert"}
        assert refused(*sign_in(keyed))
    finally:
        elsewhere.close()
    assert asked == []
