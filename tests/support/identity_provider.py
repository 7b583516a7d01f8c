"""A real identity provider for the tests: keys generated here (``cryptography``), their
JWKS served over HTTP by a server in the test process, and tokens signed with them (or with
keys the provider never published).

Each provider has a path of its own on the shared server (``/<name>/jwks.json``), so each
test's keys are fetched and cached afresh by every Countersign process that verifies them.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tools_registry.models import IdentityProvider

AUDIENCE = "countersign-tests"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any
    # What the key set says the key is for: "use", or RFC 7517's "key_ops" in its place.
    purpose: dict[str, Any] = field(default_factory=lambda: {"use": "sig"})

    def public_jwk(self) -> dict[str, Any]:
        if self.alg.startswith("ES"):
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, **self.purpose}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def rsa_key(kid: str | None = None, *, bits: int = 2048) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return SigningKey(kid=kid or f"rsa-{uuid.uuid4().hex[:8]}", alg="RS256", private=private)


def ec_key(kid: str | None = None) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(kid=kid or f"ec-{uuid.uuid4().hex[:8]}", alg="ES256", private=private)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        name = self.path.strip("/").split("/")[0]
        self.server.requests[name] += 1
        if (held := self.server.held.get(name)) is not None:
            asked, answer = held
            asked.set()
            answer.wait(30)
        if self.server.down.get(name):
            self.send_response(503)
            self.end_headers()
            return
        keys = self.server.published.get(name)
        if keys is None:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"keys": [k.public_jwk() for k in keys]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    published: dict[str, list[SigningKey]]
    down: dict[str, bool]
    requests: Counter[str]
    # A provider slow to answer: (set once a fetch came in, set to let it be answered).
    held: dict[str, tuple[threading.Event, threading.Event]]


@dataclass
class Provider:
    """One identity provider: its row in Countersign, its published keys, its server."""

    server: _Server
    name: str
    keys: list[SigningKey]
    row: IdentityProvider
    issuer: str = ""

    @property
    def jwks_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{self.name}/jwks.json"

    @property
    def fetches(self) -> int:
        """How many times the key set was asked for."""
        return self.server.requests[self.name]

    def publish(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.server.published[self.name] = self.keys

    def go_down(self, down: bool = True) -> None:
        self.server.down[self.name] = down

    @contextmanager
    def answering_late(self) -> Iterator[threading.Event]:
        """Its key set is answered only once the block ends (a provider slow to answer, the
        request that verifies a user's token held there); yields an event set once a fetch
        has come in."""
        asked, answer = threading.Event(), threading.Event()
        self.server.held[self.name] = (asked, answer)
        try:
            yield asked
        finally:
            answer.set()
            del self.server.held[self.name]

    def token(
        self,
        sub: Any = "ada",
        roles: Any = ("viewer",),
        *,
        key: SigningKey | None = None,
        expires_in: int = 300,
        audience: str = AUDIENCE,
        issuer: str | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token for ``sub`` in ``roles``, signed with ``key`` (the first published)."""
        key = key or self.keys[0]
        now = int(time.time())
        payload = {
            "iss": self.issuer if issuer is None else issuer,
            "aud": audience,
            "sub": sub,
            "iat": now,
            "exp": now + expires_in,
            **claims,
        }
        if roles is not None:
            payload["roles"] = list(roles) if isinstance(roles, tuple) else roles
        return jwt.encode(
            payload, key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})}
        )


@contextmanager
def jwks_server() -> Iterator[_Server]:
    """The identity providers' web server, on a free port of this machine."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.published, server.down, server.requests, server.held = {}, {}, Counter(), {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class ProviderFactory:
    server: _Server
    made: list[Provider] = field(default_factory=list)

    def __call__(self, *keys: SigningKey, algorithms: list[str] | None = None) -> Provider:
        """A new provider (and its IdentityProvider row) publishing ``keys`` (one RSA key
        by default)."""
        name = f"idp-{uuid.uuid4().hex[:10]}"
        published = list(keys) or [rsa_key()]
        provider = Provider(server=self.server, name=name, keys=published, row=None)  # type: ignore[arg-type]
        provider.issuer = f"https://{name}.example.com/"
        provider.publish(*published)
        provider.row = IdentityProvider.objects.create(
            name=name,
            issuer=provider.issuer,
            audience=AUDIENCE,
            jwks_url=provider.jwks_url,
            algorithms=algorithms or ["RS256", "ES256"],
        )
        self.made.append(provider)
        return provider
