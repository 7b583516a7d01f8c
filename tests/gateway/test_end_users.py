"""The end user over the REST API: the scope of their roles applied to calls and to the tool
list, asserted by a trusted agent or taken from a verified token; every bad end user a clear
error, audited, with nothing created or run and the Idempotency-Key left unused."""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from django.test import Client, override_settings

from accounts.models import SsoIdentity
from approvals import notifications
from approvals.guards import conflict_of_interest
from approvals.models import Status, ToolCall
from approvals.services import standing
from approvals.services.decisions import SeparationOfDuties, decide
from audit.models import AuditEvent
from tests.conftest import ApiClient, World, sandbox_effects
from tests.gateway.conftest import GET_CUSTOMER, SEND_EMAIL
from tests.gateway.test_errors import error_of
from tests.support.compression import gzip_bomb
from tests.support.identity_provider import (
    AUDIENCE,
    Provider,
    ProviderFactory,
    SigningKey,
    rsa_key,
)
from tools_registry import services, user_tokens
from tools_registry.models import Agent, IdentityProvider

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

CHECKLIST = {
    "viewer": {"risks": ["read"]},
    "support": {"risks": ["read", "write"]},
    "admin": {"risks": ["read", "write", "destructive"]},
}
READS = {"search_docs", "get_customer"}
WRITES = {"send_email", "update_customer", "issue_refund"}


def as_user(body: dict[str, Any], user: Any) -> dict[str, Any]:
    return {**body, "on_behalf_of": user}


def viewer(user_id: str = "ada") -> dict[str, Any]:
    return {"id": user_id, "roles": ["viewer"]}


def support(user_id: str = "ada") -> dict[str, Any]:
    return {"id": user_id, "roles": ["support"]}


@pytest.fixture(autouse=True)
def _no_cached_keys() -> Iterator[None]:
    user_tokens.forget_keys()
    yield
    user_tokens.forget_keys()


@pytest.fixture
def trusted(world: World) -> World:
    """The world's agent trusted to assert the checklist's roles, scoped as it says."""
    agent = world.agent
    agent.user_roles_from = Agent.UserRoles.ASSERTED
    agent.assertable_roles = list(CHECKLIST)
    agent.role_scopes = CHECKLIST
    services.save_agent(agent=agent, changed_by=None)
    return world


@pytest.fixture
def verifying(world: World, identity_providers: ProviderFactory) -> Provider:
    """The world's agent takes its users' roles from their tokens, scoped as the checklist."""
    provider = identity_providers()
    agent = world.agent
    agent.user_roles_from = Agent.UserRoles.VERIFIED
    agent.identity_provider = provider.row
    agent.role_scopes = CHECKLIST
    services.save_agent(agent=agent, changed_by=None)
    return provider


def tool_names(response: Any) -> set[str]:
    assert response.status_code == 200, response.content[:300]
    return {t["name"] for t in response.json()}


def listed(world: World, query: str = "", **headers: str) -> Any:
    return Client().get(
        f"/api/v1/tools?format=anthropic{query}",
        HTTP_AUTHORIZATION=f"Bearer {world.token}",
        **headers,
    )


def refused_calls(code: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="call.refused", outcome=code))


# --- Asserted roles --------------------------------------------------------------------


def test_a_viewer_may_read_but_not_write(trusted: World) -> None:
    api = trusted.api()
    assert api.submit(as_user(GET_CUSTOMER, viewer())).status_code == 200
    response = api.submit(as_user(SEND_EMAIL, viewer()))
    error = error_of(response, 403, "tool_not_allowed_for_user")
    assert "support or admin" in error["suggestion"]
    assert error["details"] == {
        "tool": "send_email",
        "user": {"id": "ada", "roles": ["viewer"], "source": "asserted"},
        "roles_allowed": ["support", "admin"],
    }
    assert not ToolCall.objects.filter(tool__name="send_email").exists()
    [event] = refused_calls("tool_not_allowed_for_user")
    assert (event.tool_name, event.data["end_user"]["roles"]) == ("send_email", ["viewer"])


def test_a_support_user_may_propose_a_write_and_the_call_says_for_whom(trusted: World) -> None:
    response = trusted.api().submit(as_user(SEND_EMAIL, support("grace@example.com")))
    assert response.status_code == 202, response.content
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert (call.on_behalf_of, call.end_user_roles, call.end_user_source) == (
        "grace@example.com",
        ["support"],
        "asserted",
    )
    submitted = AuditEvent.objects.get(action="call.submitted", call_id=call.pk)
    assert (submitted.data["end_user_roles"], submitted.data["end_user_source"]) == (
        ["support"],
        "asserted",
    )


def test_a_call_that_names_no_role_gets_the_agents_choice(trusted: World) -> None:
    api = trusted.api()
    assert api.submit(as_user(SEND_EMAIL, "ada")).status_code == 202, "the whole allowlist"
    trusted.agent.unscoped_access = Agent.UnscopedAccess.READS
    services.save_agent(agent=trusted.agent, changed_by=None)
    error_of(api.submit(SEND_EMAIL), 403, "tool_not_allowed_for_user")
    assert api.submit(GET_CUSTOMER).status_code == 200


def test_the_tool_list_follows_the_user(trusted: World) -> None:
    everything = READS | WRITES | {"delete_customer"}
    assert tool_names(listed(trusted)) == everything
    assert tool_names(listed(trusted, "&on_behalf_of=ada&roles=viewer")) == READS
    assert tool_names(listed(trusted, "&on_behalf_of=ada&roles=viewer,support")) == READS | WRITES
    # Roles alone: what anyone in those roles may call (a call itself always names its user).
    assert tool_names(listed(trusted, "&roles=viewer")) == READS
    header = {"HTTP_COUNTERSIGN_ON_BEHALF_OF": json.dumps(viewer())}
    assert tool_names(listed(trusted, **header)) == READS
    assert tool_names(listed(trusted, **{"HTTP_COUNTERSIGN_ON_BEHALF_OF": "ada"})) == everything


def test_a_call_naming_its_user_in_the_tool_lists_header_is_refused(trusted: World) -> None:
    """The header narrows the tool list; a call read without it ran with the access of no user
    named (the whole allowlist): a viewer's send_email was accepted."""
    header = {"HTTP_COUNTERSIGN_ON_BEHALF_OF": json.dumps(viewer())}
    for body in (SEND_EMAIL, as_user(GET_CUSTOMER, viewer())):
        error = error_of(trusted.api().submit(body, **header), 400, "invalid_end_user")
        assert error["details"] == [
            {"path": "Countersign-On-Behalf-Of", "message": "is not read on a call"}
        ]
    assert not ToolCall.objects.exists()


@pytest.mark.parametrize(
    ("user", "status", "code"),
    [
        ({"id": "ada", "roles": ["viewer", 7]}, 400, "invalid_end_user"),
        ({"id": "ada", "roles": ["r" * 64] * 33}, 400, "invalid_end_user"),
        ({"id": "ada", "team": "x"}, 400, "invalid_end_user"),
        (["ada"], 400, "invalid_end_user"),
        # Characters a reviewer cannot see, or that reorder what they see: "bob" with a
        # right-to-left override reads as another id; docs/end-users.md says printable.
        ("b\u202eob", 400, "invalid_end_user"),
        ({"id": "b\u200bob", "roles": ["viewer"]}, 400, "invalid_end_user"),
        ({"id": "\u2066ada\u2069", "roles": ["viewer"]}, 400, "invalid_end_user"),
        ({"id": "ada", "roles": ["root"]}, 403, "role_not_assertable"),
    ],
)
def test_a_bad_end_user_is_refused_audited_and_leaves_the_key_unused(
    trusted: World, user: Any, status: int, code: str
) -> None:
    key = str(uuid.uuid4())
    api = trusted.api()
    error_of(api.submit(as_user(SEND_EMAIL, user), key=key), status, code)
    [event] = refused_calls(code)
    assert (event.agent_name, event.data["tool"]) == ("support-bot", "send_email")
    assert not ToolCall.objects.exists()
    fixed = api.submit(as_user(SEND_EMAIL, support()), key=key)
    assert fixed.status_code == 202, "the refused request spent nothing, not even its key"


def test_an_agent_not_trusted_to_assert_roles_is_refused(world: World) -> None:
    error = error_of(world.api().submit(as_user(SEND_EMAIL, support())), 403, "role_not_assertable")
    assert "not trusted" in error["message"]


@pytest.mark.parametrize(
    "header",
    [
        '{"id": "x", "roles": ["\\udfff"]}',  # an unpaired surrogate: not storable
        '{"id": "a\\u0000b", "roles": ["viewer"]}',  # NUL: not storable
        '{"id": "x", "roles": [1e400]}',
        '{"id": NaN}',
        '{"id": "x", "roles": ' + "[" * 40 + "]" * 40 + "}",
    ],
)
@pytest.mark.parametrize("trusting", [True, False])
def test_a_header_that_cannot_be_stored_is_refused_not_a_500(
    request: pytest.FixtureRequest, world: World, header: str, trusting: bool
) -> None:
    if trusting:
        request.getfixturevalue("trusted")
    error_of(listed(world, HTTP_COUNTERSIGN_ON_BEHALF_OF=header), 400, "invalid_end_user")
    assert AuditEvent.objects.filter(action="end_user.refused", outcome="invalid_end_user")


def test_a_header_naming_a_key_twice_is_refused_not_read_as_its_last_value(
    trusted: World,
) -> None:
    # Read as its last value, the list was a supporter's; another reader may take a viewer.
    header = '{"id": "ada", "roles": ["viewer"], "roles": ["support"]}'
    error = error_of(listed(trusted, HTTP_COUNTERSIGN_ON_BEHALF_OF=header), 400, "invalid_end_user")
    assert '"roles" twice' in error["message"]
    assert AuditEvent.objects.filter(action="end_user.refused", outcome="invalid_end_user")


def test_a_refused_tool_list_is_audited(trusted: World) -> None:
    error_of(listed(trusted, "&on_behalf_of=ada&roles=root"), 403, "role_not_assertable")
    error_of(listed(trusted, HTTP_COUNTERSIGN_ON_BEHALF_OF="{not json"), 400, "invalid_end_user")
    outcomes = sorted(
        AuditEvent.objects.filter(action="end_user.refused").values_list("outcome", flat=True)
    )
    assert outcomes == ["invalid_end_user", "role_not_assertable"]


# --- Verified roles --------------------------------------------------------------------


def test_a_verified_users_token_decides_their_tools(world: World, verifying: Provider) -> None:
    token = verifying.token("ada@example.com", ["viewer"])
    api = world.api()
    header = {"HTTP_COUNTERSIGN_USER_TOKEN": token}
    assert tool_names(listed(world, **header)) == READS
    assert api.submit(GET_CUSTOMER, **header).status_code == 200
    error_of(api.submit(SEND_EMAIL, **header), 403, "tool_not_allowed_for_user")
    promoted = {"HTTP_COUNTERSIGN_USER_TOKEN": verifying.token("ada@example.com", ["support"])}
    response = api.submit(SEND_EMAIL, **promoted)
    assert response.status_code == 202
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert (call.on_behalf_of, call.end_user_source) == ("ada@example.com", "verified")
    assert verifying.fetches == 1


def test_a_key_sent_for_one_verified_user_is_not_another_users_answer(
    world: World, verifying: Provider
) -> None:
    """The user's token rides outside the body, so two users' calls can be the same body:
    the key binds the user the token names too, and never hands one user another's answer."""
    api = world.api()
    ada = {"HTTP_COUNTERSIGN_USER_TOKEN": verifying.token("ada@example.com", ["support"])}
    grace = {"HTTP_COUNTERSIGN_USER_TOKEN": verifying.token("grace@example.com", ["support"])}
    first = api.submit(SEND_EMAIL, key="shared-key", **ada)
    assert first.status_code == 202, first.content
    error_of(api.submit(SEND_EMAIL, key="shared-key", **grace), 422, "idempotency_key_reused")
    # Ada's own resend, with a token issued since, is her call again.
    again = api.submit(
        SEND_EMAIL,
        key="shared-key",
        HTTP_COUNTERSIGN_USER_TOKEN=verifying.token("ada@example.com", ["support"]),
    )
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert ToolCall.objects.count() == 1


def test_a_key_stored_before_keys_bound_verified_users_still_replays_for_its_user_alone(
    world: World, verifying: Provider
) -> None:
    """Records stored before the upgrade hash the body alone: a resend by the user its call
    was made for still replays (a 422 would have them send it again under a new key), and
    another user's resend is still refused."""
    from audit.canonical import canonical_json, sha256_hex
    from gateway.models import IdempotencyRecord

    api = world.api()
    ada = {"HTTP_COUNTERSIGN_USER_TOKEN": verifying.token("ada@example.com", ["support"])}
    grace = {"HTTP_COUNTERSIGN_USER_TOKEN": verifying.token("grace@example.com", ["support"])}
    first = api.submit(SEND_EMAIL, key="old-key", **ada)
    IdempotencyRecord.objects.filter(key="old-key").update(
        request_hash=sha256_hex(canonical_json(SEND_EMAIL))  # as stored before the upgrade
    )
    again = api.submit(SEND_EMAIL, key="old-key", **ada)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    error_of(api.submit(SEND_EMAIL, key="old-key", **grace), 422, "idempotency_key_reused")
    # One still in flight (its request died before storing the answer) names no call yet.
    IdempotencyRecord.objects.filter(key="old-key").update(
        state=IdempotencyRecord.State.IN_FLIGHT, call_id=None, response_status=None
    )
    assert api.submit(SEND_EMAIL, key="old-key", **ada).status_code != 422
    error_of(api.submit(SEND_EMAIL, key="old-key", **grace), 422, "idempotency_key_reused")


@pytest.mark.parametrize("case", ["expired", "wrong key", "alg none", "garbage"])
def test_a_bad_token_is_refused_and_audited_without_the_token(
    world: World, verifying: Provider, case: str
) -> None:
    token = {
        "expired": lambda: verifying.token(roles=["admin"], expires_in=-300),
        "wrong key": lambda: verifying.token(
            roles=["admin"], key=rsa_key(kid=verifying.keys[0].kid)
        ),
        "alg none": lambda: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZGEiLCJyb2xlcyI6WyJhZG1pbiJdfQ.",
        "garbage": lambda: "Bearer what",
    }[case]()
    api = world.api()
    error = error_of(
        api.submit(SEND_EMAIL, HTTP_COUNTERSIGN_USER_TOKEN=token), 401, "user_token_invalid"
    )
    assert error["retryable"] is False
    assert not ToolCall.objects.exists()
    error_of(listed(world, HTTP_COUNTERSIGN_USER_TOKEN=token), 401, "user_token_invalid")
    trail = json.dumps(list(AuditEvent.objects.values("data", "outcome")), default=str)
    assert trail.count("user_token_invalid") >= 2, "the call and the list are both audited"
    assert token not in trail


def test_a_provider_that_is_down_answers_retryable_and_runs_nothing(
    world: World, verifying: Provider
) -> None:
    verifying.go_down()
    response = world.api().submit(
        SEND_EMAIL, HTTP_COUNTERSIGN_USER_TOKEN=verifying.token(roles=["support"])
    )
    error = error_of(response, 503, "identity_provider_unavailable")
    assert error["retryable"] is True and response["Retry-After"] == "5"
    assert refused_calls("identity_provider_unavailable")
    assert not ToolCall.objects.exists() and sandbox_effects() == []


def kidless(provider: Provider, key: SigningKey, sub: str, roles: list[str]) -> str:
    """A token that names no key (no kid): its provider publishes one key per algorithm."""
    now = int(time.time())
    claims = {"iss": provider.issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300}
    return jwt.encode({**claims, "roles": roles}, key.private, algorithm=key.alg)


def test_a_token_naming_no_key_verifies_once_the_provider_rotated_its_key(
    world: World, verifying: Provider
) -> None:
    """A token without a kid was checked with the one key in the cached set, never fetched
    again: once the provider rotated that key, its users' genuine tokens were refused for
    good (401) until the cache expired. Now the keys are fetched again, as for a key id
    that is not in them, and a token no published key signed is still refused."""
    old = verifying.keys[0]
    assert (
        tool_names(
            listed(world, HTTP_COUNTERSIGN_USER_TOKEN=kidless(verifying, old, "ada", ["viewer"]))
        )
        == READS
    )
    rotated = rsa_key()
    verifying.publish(rotated)
    token = {"HTTP_COUNTERSIGN_USER_TOKEN": kidless(verifying, rotated, "grace", ["support"])}
    with override_settings(JWKS_MIN_REFRESH_SECONDS=60):
        # Fetched moments ago, the keys are not asked for again yet: worth a retry.
        error_of(listed(world, **token), 503, "identity_provider_unavailable")
    assert verifying.fetches == 1
    with override_settings(JWKS_MIN_REFRESH_SECONDS=0):
        assert tool_names(listed(world, **token)) == READS | WRITES
        response = world.api().submit(SEND_EMAIL, **token)
        assert response.status_code == 202, response.content
        forged = kidless(verifying, rsa_key(), "mallory", ["admin"])
        error = error_of(
            listed(world, HTTP_COUNTERSIGN_USER_TOKEN=forged), 401, "user_token_invalid"
        )
    assert "signature does not verify" in error["message"]
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert (call.on_behalf_of, call.end_user_source) == ("grace", "verified")


def test_a_read_for_a_viewer_runs_and_a_refused_write_has_no_effect(trusted: World) -> None:
    """The oracle: the sandbox saw the read's customer lookup only."""
    api = trusted.api()
    api.submit(as_user(GET_CUSTOMER, viewer()))
    api.submit(as_user(SEND_EMAIL, viewer()))
    assert [e["tool"] for e in sandbox_effects() if e["tool"] == "send_email"] == []
    assert ToolCall.objects.get().status == Status.SUCCEEDED


def test_the_openapi_schema_documents_both_ways(db: None) -> None:
    schema = ApiClient("x").client.get("/api/v1/openapi.json").json()
    body = json.dumps(schema)
    assert "Countersign-User-Token" in body and "roles" in body


@pytest.mark.parametrize(
    ("on_behalf_of", "headers", "code"),
    [
        (5, {}, "invalid_end_user"),
        ({"id": "ada", "roles": ["admin"]}, {}, "role_not_assertable"),
        ("", {"HTTP_COUNTERSIGN_USER_TOKEN": "not-a-token"}, "user_token_invalid"),
    ],
    ids=["malformed_user", "roles_not_assertable", "user_token"],
)
def test_a_call_refused_for_its_end_user_masks_the_tools_hidden_fields_in_the_trail(
    world: World, on_behalf_of: Any, headers: dict[str, str], code: str
) -> None:
    """Refused before the tool is read (whom the call is for), the arguments still go to the
    trail with the named tool's hidden fields masked, as for every other refusal."""
    secret = "zebra-lantern-42"  # no detector finds it: only the tool's policy hides it
    body = {
        "tool": "update_customer",
        "arguments": {"customer_id": "cus_0001", "changes": {"email": secret}},
        "session_id": "s",
        "on_behalf_of": on_behalf_of,
    }
    refused = world.api().submit(body, **headers)
    assert refused.json()["error"]["code"] == code
    (event,) = AuditEvent.objects.filter(action="call.refused")
    assert secret not in json.dumps(event.data)
    assert event.data["arguments"]["customer_id"] == "cus_0001"


@pytest.mark.parametrize(
    ("sub", "roles"),
    [
        ("ada\x00", ["support"]),  # NUL: PostgreSQL cannot store it
        ("\ud800", ["support"]),  # an unpaired surrogate: not UTF-8, not hashable
        ("ada", ["\udfff"]),
        ("ada\nbob", ["support"]),  # a control character, as on_behalf_of refuses
        ("   ", ["support"]),  # only spaces, as on_behalf_of refuses
    ],
)
def test_a_token_naming_a_user_or_role_no_request_could_name_is_refused_not_a_500(
    world: World, verifying: Provider, sub: str, roles: list[str]
) -> None:
    """The token's claims are the provider's, but the id and roles are the same values a
    body names: what on_behalf_of may not hold, a token may not either."""
    token = verifying.token(sub, roles)
    error_of(
        world.api().submit(GET_CUSTOMER, HTTP_COUNTERSIGN_USER_TOKEN=token),
        401,
        "user_token_invalid",
    )
    error_of(listed(world, HTTP_COUNTERSIGN_USER_TOKEN=token), 401, "user_token_invalid")
    assert not ToolCall.objects.exists()


def test_a_namespaced_roles_claim_is_read_whole(world: World, verifying: Provider) -> None:
    """Auth0 and others require custom claims named by a URL, dots and all: the claim of
    that exact name is the roles, not a path through "https://example" and "com/roles"."""
    claim = "https://countersign.example.com/roles"
    IdentityProvider.objects.filter(pk=verifying.row.pk).update(roles_claim=claim)
    world.agent.unscoped_access = Agent.UnscopedAccess.ALLOWLIST
    services.save_agent(agent=world.agent, changed_by=None)
    token = verifying.token("ada", roles=None, **{claim: ["viewer"]})
    header = {"HTTP_COUNTERSIGN_USER_TOKEN": token}
    assert tool_names(listed(world, **header)) == READS, "the viewer's tools, not everything"
    error_of(world.api().submit(SEND_EMAIL, **header), 403, "tool_not_allowed_for_user")


@contextlib.contextmanager
def keys_served_by(provider: Provider, handler: type[BaseHTTPRequestHandler]) -> Iterator[None]:
    """The provider's key set served by ``handler`` from a server of this process."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    IdentityProvider.objects.filter(pk=provider.row.pk).update(
        jwks_url=f"http://{host}:{port}/jwks.json"
    )
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


class _Trickle(BaseHTTPRequestHandler):
    """A key set that never finishes: a byte now and then, each within the read timeout."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        for _ in range(30):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.3)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_key_set_that_trickles_in_is_given_up_within_the_timeout(
    world: World, verifying: Provider
) -> None:
    """JWKS_TIMEOUT_SECONDS bounds the whole fetch, not each read: a provider (or a proxy)
    that trickles its answer would otherwise hold every request verifying its tokens (they
    wait for the one fetch) as long as it likes."""
    with keys_served_by(verifying, _Trickle), override_settings(JWKS_TIMEOUT_SECONDS=1):
        started = time.monotonic()
        response = listed(world, HTTP_COUNTERSIGN_USER_TOKEN=verifying.token())
        took = time.monotonic() - started
    error_of(response, 503, "identity_provider_unavailable")
    assert took < 2.5, f"the fetch went on for {took:.1f} s"


class _Inflating(BaseHTTPRequestHandler):
    """A key set of 130 KB of gzip that inflates to 128 MB."""

    @staticmethod
    @functools.cache
    def body() -> bytes:  # made once, when a test first asks, not as the module loads
        return gzip_bomb(128 << 20)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(self.body())))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(self.body())

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_compressed_key_set_is_inflated_no_further_than_its_limit(
    world: World, verifying: Provider
) -> None:
    """Each chunk of a gzip answer was inflated whole before the 1 MB limit was looked at."""
    _Inflating.body()  # compressed before memory is traced
    with keys_served_by(verifying, _Inflating):
        tracemalloc.start()
        try:
            response = listed(world, HTTP_COUNTERSIGN_USER_TOKEN=verifying.token())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    error = error_of(response, 503, "identity_provider_unavailable")
    assert "too large" in error["message"]
    assert peak < 32 * 1024 * 1024, f"{peak / 2**20:.0f} MB held while reading it"


class _Nested(BaseHTTPRequestHandler):
    """A key set within the size limit whose JSON nests deeper than Python parses."""

    asked = 0

    def do_GET(self) -> None:
        type(self).asked += 1
        depth = 200_000
        body = b'{"keys": ' + b"[" * depth + b"]" * depth + b"}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_key_set_nested_too_deep_is_unavailable_not_a_500(
    world: World, verifying: Provider
) -> None:
    """Parsing it ran out of recursion: an error no check expected, a 500 for the call and
    the tool list, and the failure was not kept, so every request fetched the set again."""
    _Nested.asked = 0
    header = {"HTTP_COUNTERSIGN_USER_TOKEN": verifying.token()}
    with keys_served_by(verifying, _Nested):
        listing = Client(raise_request_exception=False).get(
            "/api/v1/tools", HTTP_AUTHORIZATION=f"Bearer {world.token}", **header
        )
        call = world.api().submit(SEND_EMAIL, **header)
    error = error_of(listing, 503, "identity_provider_unavailable")
    assert "not a JWKS" in error["message"]
    error_of(call, 503, "identity_provider_unavailable")
    assert _Nested.asked == 1, "a failed fetch is asked again once per interval, not per request"
    assert not ToolCall.objects.exists()


@pytest.mark.parametrize("named_by", ["sso_subject", "decomposed_username"])
def test_a_verified_user_who_reviews_cannot_approve_their_own_call(
    world: World, verifying: Provider, named_by: str
) -> None:
    """Separation of duties for a verified user: the token names them by its ``sub`` (the
    default claim), the same ``sub`` their SSO sign-in is linked to, though their account
    is named by ``preferred_username``; or by a name in another Unicode form than the one
    their account was stored in (Django keeps usernames NFKC)."""
    bob = world.bob
    SsoIdentity.objects.create(user=bob, subject="00u1bob7x")
    bob.username = "josé"  # as create_user stores it: NFKC, the é composed
    bob.save()
    user_id = {"sso_subject": "00u1bob7x", "decomposed_username": "jose\u0301"}[named_by]
    header = {"HTTP_COUNTERSIGN_USER_TOKEN": verifying.token(user_id, ["support"])}
    response = world.api().submit(SEND_EMAIL, **header)
    assert response.status_code == 202, response.content
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert (call.on_behalf_of, call.end_user_source) == (user_id, "verified")
    assert conflict_of_interest(call, bob) == "on_behalf_of"
    with pytest.raises(SeparationOfDuties):
        decide(call_id=call.pk, reviewer=bob, verdict="approve")


def bobs_call(world: World, provider: Provider, **claims: Any) -> ToolCall:
    """A call made for bob through his identity provider's token, which names him by an
    opaque ``sub`` his account is not linked to (he signs in with a password) and gives
    his e-mail address, in another case than his account's."""
    token = provider.token("00u1bob", ["support"], **{"email": "Bob@Example.COM", **claims})
    response = world.api().submit(SEND_EMAIL, HTTP_COUNTERSIGN_USER_TOKEN=token)
    assert response.status_code == 202, response.content
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert (call.on_behalf_of, call.end_user_source) == ("00u1bob", "verified")
    return call


@pytest.fixture
def charlie_reviews(world: World) -> Any:
    """charlie reviews send_email too: someone else who may approve bob's calls."""
    services.grant_review(tool=world.tools["send_email"], user=world.charlie)
    return world.charlie


def test_a_reviewer_known_by_the_e_mail_in_the_users_token_cannot_approve_the_call(
    world: World, verifying: Provider, charlie_reviews: Any
) -> None:
    """bob has no single sign-on link, so the token's ``sub`` is not a name of his account:
    the e-mail it gives keeps him from approving his own call; another reviewer may."""
    bob = world.bob
    assert not SsoIdentity.objects.filter(user=bob).exists()
    call = bobs_call(world, verifying)
    assert conflict_of_interest(call, bob) == "on_behalf_of"
    web = Client()
    web.force_login(bob)
    page = web.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "approve", "comment": "", "arguments_hash": call.arguments_hash},
        HTTP_HX_REQUEST="true",
    )
    assert "The agent acts on your behalf in this call." in page.content.decode()
    with pytest.raises(SeparationOfDuties) as refused:
        decide(call_id=call.pk, reviewer=bob, verdict="approve")
    assert refused.value.code == "separation_of_duties"
    assert not call.decisions.exists()
    assert decide(call_id=call.pk, reviewer=charlie_reviews, verdict="approve").decided
    call.refresh_from_db()
    assert call.status == Status.APPROVED


def test_a_preferred_username_in_the_users_token_names_them_too(
    world: World, verifying: Provider
) -> None:
    call = bobs_call(world, verifying, email="someone.else@example.org", preferred_username="BOB")
    assert conflict_of_interest(call, world.bob) == "on_behalf_of"
    assert conflict_of_interest(call, world.charlie) == ""


def test_a_standing_approval_by_the_user_does_not_cover_their_call(
    world: World, verifying: Provider
) -> None:
    adas = world.api().submit(
        SEND_EMAIL, HTTP_COUNTERSIGN_USER_TOKEN=verifying.token("00u1ada", ["support"])
    )
    first = ToolCall.objects.get(pk=adas.json()["id"])
    given = decide(
        call_id=first.pk,
        reviewer=world.bob,
        verdict="approve",
        standing_terms=standing.Terms(match="any", seconds=3600),
    )
    assert given.standing is not None
    call = bobs_call(world, verifying)
    assert (call.status, call.standing_approval_id) == (Status.PENDING, None)
    again = world.api().submit(
        SEND_EMAIL, HTTP_COUNTERSIGN_USER_TOKEN=verifying.token("00u1ada", ["support"])
    )
    assert again.json()["status"] == "approved", "it covers the calls of others"


def test_the_user_is_not_mailed_about_their_own_call(
    world: World,
    verifying: Provider,
    charlie_reviews: Any,
    mailoutbox: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    call = bobs_call(world, verifying)
    with django_capture_on_commit_callbacks(execute=True):
        assert notifications.notify_new_calls() == 1
    assert sorted(to for message in mailoutbox for to in message.to) == ["charlie@example.com"]
    event = AuditEvent.objects.get(call_id=call.pk, action="call.reviewers_notified")
    assert event.data["recipients"] == ["charlie"]


def test_the_users_other_names_are_masked_in_the_trail_and_kept_from_reviewers(
    world: World, verifying: Provider, charlie_reviews: Any
) -> None:
    call = bobs_call(world, verifying, preferred_username="bobby.tables")
    assert call.end_user_aliases == ["bob@example.com", "bobby.tables"]
    [submitted] = AuditEvent.objects.filter(call_id=call.pk, action="call.submitted")
    trail = json.dumps(submitted.data).lower()
    assert "bob@example.com" not in trail and "bobby.tables" not in trail
    assert [alias.startswith("[masked:") for alias in submitted.data["end_user_aliases"]] == [
        True,
        True,
    ]
    web = Client()
    web.force_login(charlie_reviews)
    page = web.get(f"/approvals/{call.pk}/").content.decode().lower()
    assert "00u1bob" in page  # who the call is for, as it names them
    assert "bob@example.com" not in page and "bobby.tables" not in page


@pytest.mark.parametrize(
    "claims",
    [
        {"email": 42, "preferred_username": ["bob"]},  # not strings: left out
        {"email": "00U1BOB"},  # the id itself, in another case
        {"email": "  "},
    ],
)
def test_claims_that_name_nobody_else_add_no_names(
    world: World, verifying: Provider, claims: dict[str, Any]
) -> None:
    assert bobs_call(world, verifying, **claims).end_user_aliases == []


def test_a_long_or_unstorable_claim_is_cut_and_cleaned_not_refused(
    world: World, verifying: Provider
) -> None:
    call = bobs_call(world, verifying, email="b\x00ob@example.com", preferred_username="x" * 5000)
    assert call.end_user_aliases == ["bob@example.com", "x" * 254]
    assert conflict_of_interest(call, world.bob) == "on_behalf_of"


def test_a_named_user_is_matched_by_their_name_alone(trusted: World) -> None:
    """No token, no other names: an agent's word is not a verified e-mail address."""
    response = trusted.api().submit(as_user(SEND_EMAIL, support("00u1bob")))
    call = ToolCall.objects.get(pk=response.json()["id"])
    assert (call.end_user_source, call.end_user_aliases) == ("asserted", [])
    assert conflict_of_interest(call, trusted.bob) == ""


class _Hanging(BaseHTTPRequestHandler):
    """A provider that takes the connection and never answers in time; counts the asks."""

    asked = 0

    def do_GET(self) -> None:
        type(self).asked += 1
        time.sleep(4)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _SlowAfterFirst(BaseHTTPRequestHandler):
    """A provider that answers its first fetch at once and every later one after 4 s."""

    body = b""
    asked = 0

    def do_GET(self) -> None:
        type(self).asked += 1
        if type(self).asked > 1:
            time.sleep(4)
        with contextlib.suppress(OSError):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("user_id", ["b\u202eob", "a\u200bda", "\u2067ada"])
def test_a_tool_list_for_an_id_with_hidden_characters_is_refused(
    trusted: World, user_id: str
) -> None:
    query = f"&on_behalf_of={quote(user_id)}&roles=viewer"
    error_of(listed(trusted, query), 400, "invalid_request")
    header = json.dumps({"id": user_id, "roles": ["viewer"]})
    error_of(listed(trusted, HTTP_COUNTERSIGN_ON_BEHALF_OF=header), 400, "invalid_end_user")
