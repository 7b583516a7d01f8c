"""A small, real OpenID Connect provider for the single sign-on tests, built on Authlib's
provider classes and Flask, served by uvicorn in its own process (``running_provider``).

It speaks the authorization code flow with PKCE, signs ID tokens with an RSA key it makes
at start, publishes that key at ``/jwks``, and answers ``/userinfo``. Its people live in a
JSON file (``OIDC_PROVIDER_USERS``) read on every request, so a test changes someone's
groups at the provider by rewriting the file, as an identity team would in its console:
``{"username": {"password": ..., "email": ..., "groups": [...]}}``, with ``sub`` (else
``sub-<username>``) and ``preferred_username`` (else the username) when a test needs them,
``signed_in_seconds_ago`` for a person whose session at the provider is that old, and
``id_token`` for an ID token unlike the user info: its claims (``aud``, ``sub``, ...) put in
as given, with ``clock_ahead_seconds`` for a provider whose clock is ahead (or, negative,
behind) ours by that much (its ``iat`` and ``exp``).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2wsgi import WSGIMiddleware
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, abort, jsonify, request
from joserfc.jwk import RSAKey
from markupsafe import escape

from tests.support.web import WebProcess, free_port, running_asgi

CLIENT_ID = "countersign"
CLIENT_SECRET = "countersign-sso-test-secret"
KEY = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig"})


def _people() -> dict[str, dict[str, Any]]:
    return json.loads(Path(os.environ["OIDC_PROVIDER_USERS"]).read_text())  # type: ignore[no-any-return]


@dataclass
class Person:
    username: str

    def get_user_id(self) -> str:
        return self.username


@dataclass
class Client:
    redirect_uris: list[str]
    client_id: str = CLIENT_ID

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        allowed = {"openid", "email", "profile", "groups"}
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, CLIENT_SECRET)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in {"client_secret_post", "client_secret_basic"}

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code:
    code: str
    user: Person
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str:
        return "0"

    def get_amr(self) -> list[str]:
        return ["pwd"]


CODES: dict[str, Code] = {}
TOKENS: dict[str, str] = {}  # access token -> username


def user_info(username: str, scope: str) -> UserInfo:
    person = _people().get(username, {})
    info = UserInfo(
        sub=person.get("sub", f"sub-{username}"),
        preferred_username=person.get("preferred_username", username),
    )
    if "email" in scope:
        info["email"] = person.get("email", "")
    if "groups" in scope:
        groups = person.get("groups", [])
        # As the file says: a provider may send a claim of any shape.
        info["groups"] = list(groups) if isinstance(groups, list) else groups
    return info


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post", "client_secret_basic"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        # A person may hold a session here from earlier (signed_in_seconds_ago): the
        # provider then passes it on, and says when they really signed in (auth_time).
        earlier = int(_people().get(request.user.username, {}).get("signed_in_seconds_ago", 0))
        CODES[code] = Code(
            code=code,
            user=request.user,
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            auth_time=int(time.time()) - earlier,
        )

    def query_authorization_code(self, code: str, client: Any) -> Code | None:
        return CODES.get(code)

    def delete_authorization_code(self, authorization_code: Code) -> None:
        CODES.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> Person:
        return authorization_code.user


class OpenIDConnectCode(OpenIDCode):
    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return any(code.nonce == nonce for code in CODES.values())

    def resolve_client_private_key(self, client: Any) -> RSAKey:
        return KEY

    def get_client_algorithm(self, client: Any) -> str:
        return "RS256"

    def get_client_claims(self, client: Any) -> dict[str, Any]:
        return {"iss": os.environ.get("OIDC_PROVIDER_ISSUER", ""), "aud": [CLIENT_ID]}

    def get_encode_header(self, client: Any) -> dict[str, str]:
        return {"alg": "RS256", "kid": "test-key"}

    def generate_user_info(self, user: Person, scope: str) -> UserInfo:
        """The ID token's claims beyond the client's: the user info, and what the person's
        ``id_token`` in the file puts in their place (these win over iat, exp and aud)."""
        info = user_info(user.username, scope)
        overrides = dict(_people().get(user.username, {}).get("id_token", {}))
        ahead = int(overrides.pop("clock_ahead_seconds", 0))
        if ahead:
            now = int(time.time()) + ahead
            info.update(iat=now, exp=now + self.DEFAULT_EXPIRES_IN)
        info.update(overrides)
        return info


flask_app = Flask(__name__)


def _client(client_id: str) -> Client | None:
    if client_id != CLIENT_ID:
        return None
    return Client(redirect_uris=os.environ["OIDC_PROVIDER_REDIRECT_URIS"].split(","))


def _save_token(token: dict[str, Any], request: Any) -> None:
    TOKENS[token["access_token"]] = request.user.username


server = AuthorizationServer(flask_app, query_client=_client, save_token=_save_token)
server.register_grant(
    AuthorizationCodeGrant, [OpenIDConnectCode(require_nonce=False), CodeChallenge(required=False)]
)


@flask_app.route("/authorize", methods=["GET", "POST"])
def authorize() -> Any:
    """The provider's own sign-in form (GET), and the grant once the password is right."""
    if request.method == "GET":
        server.get_consent_grant(end_user=None)  # validates client, redirect URI, scope
        return (
            f'<form method="post" action="/authorize?{escape(request.query_string.decode())}">'
            '<input name="username"><input name="password" type="password">'
            "<button>Sign in</button></form>"
        )
    username = request.form.get("username", "")
    person = _people().get(username)
    if person is None or not secrets.compare_digest(
        person["password"], request.form.get("password", "")
    ):
        return "wrong username or password", 401
    return server.create_authorization_response(grant_user=Person(username))


@flask_app.route("/token", methods=["POST"])
def issue_token() -> Any:
    return server.create_token_response()


@flask_app.route("/userinfo")
def userinfo() -> Any:
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    username = TOKENS.get(bearer)
    if username is None:
        abort(401)
    return jsonify(dict(user_info(username, "openid email profile groups")))


@flask_app.route("/jwks")
def jwks() -> Any:
    return jsonify({"keys": [KEY.as_dict(private=False)]})


app = WSGIMiddleware(flask_app)  # served by uvicorn, as the other test servers are


@dataclass(frozen=True)
class Provider:
    web: WebProcess
    users_file: Path

    @property
    def url(self) -> str:
        return self.web.url

    def set_people(self, people: dict[str, dict[str, Any]]) -> None:
        self.users_file.write_text(json.dumps(people))

    def settings(self) -> dict[str, Any]:
        """The RP settings that point Countersign at this provider."""
        return {
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": f"{self.url}/authorize",
            "OIDC_OP_TOKEN_ENDPOINT": f"{self.url}/token",
            "OIDC_OP_USER_ENDPOINT": f"{self.url}/userinfo",
            "OIDC_OP_JWKS_ENDPOINT": f"{self.url}/jwks",
            "OIDC_OP_ISSUER": self.url,  # the issuer its ID tokens name (running_provider)
            "OIDC_RP_SIGN_ALGO": "RS256",
        }


@contextmanager
def running_provider(
    tmp_path: Path, *, redirect_uri: str, people: dict[str, dict[str, Any]]
) -> Iterator[Provider]:
    users_file = tmp_path / "oidc-people.json"
    users_file.write_text(json.dumps(people))
    port = free_port()
    env = {
        "OIDC_PROVIDER_ISSUER": f"http://127.0.0.1:{port}",
        **os.environ,
        "OIDC_PROVIDER_USERS": str(users_file),
        "OIDC_PROVIDER_REDIRECT_URIS": redirect_uri,
        "PYTHONUNBUFFERED": "1",
        # Authlib refuses plain-HTTP OAuth unless told it is a local test.
        "AUTHLIB_INSECURE_TRANSPORT": "1",
    }
    with running_asgi(
        "tests.support.oidc_provider:app", tmp_path=tmp_path, env=env, ready="/jwks", port=port
    ) as web:
        yield Provider(web=web, users_file=users_file)
