"""Requests that need an identity provider's keys while they are being fetched: they share the
one fetch, and a key already cached does not wait for it. Committed, with threads (kept
apart from test_end_users.py, whose tests share one world and roll back)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from django.test import override_settings

from tests.conftest import World
from tests.gateway.conftest import in_threads
from tests.gateway.test_end_users import (
    _Hanging,
    _SlowAfterFirst,
    keys_served_by,
    listed,
)
from tests.gateway.test_errors import error_of
from tests.support.identity_provider import (
    ProviderFactory,
    rsa_key,
)
from tools_registry import services, user_tokens
from tools_registry.models import Agent


@pytest.fixture(autouse=True)
def _no_cached_keys() -> Iterator[None]:
    user_tokens.forget_keys()
    yield
    user_tokens.forget_keys()


@pytest.mark.django_db(transaction=True)
def test_requests_waiting_on_a_provider_that_hangs_share_its_one_fetch(
    live_world: World, identity_providers: ProviderFactory
) -> None:
    """Requests arriving together wait for the one fetch under way. When it timed out, each
    of them fetched again in turn (the refresh interval counted from the fetch's start, which
    a fetch as long as the timeout had used up): one fetch per request, the last request
    answered after as many timeouts as there were requests before it."""
    provider = identity_providers()
    agent = live_world.agent
    agent.user_roles_from = Agent.UserRoles.VERIFIED
    agent.identity_provider = provider.row
    services.save_agent(agent=agent, changed_by=None)
    token = provider.token()
    _Hanging.asked = 0

    def list_tools(_: int) -> tuple[int, float]:
        started = time.monotonic()
        response = listed(live_world, HTTP_COUNTERSIGN_USER_TOKEN=token)
        error_of(response, 503, "identity_provider_unavailable")
        return response.status_code, time.monotonic() - started

    with (
        keys_served_by(provider, _Hanging),
        override_settings(JWKS_TIMEOUT_SECONDS=1, JWKS_MIN_REFRESH_SECONDS=1),
    ):
        answered = in_threads(4, list_tools)
    slowest = max(took for _, took in answered)
    assert _Hanging.asked == 1, f"{_Hanging.asked} fetches for 4 requests"
    assert slowest < 2.5, f"a request waited {slowest:.1f} s"


@pytest.mark.django_db(transaction=True)
def test_a_token_whose_key_is_cached_does_not_wait_for_a_fetch_under_way(
    live_world: World, identity_providers: ProviderFactory
) -> None:
    """A token whose key is in the fresh cached set waited for any fetch of the set under
    way, then was checked with the keys it already had: a token naming a made-up key (a
    fetch per interval, which any agent can ask for) held every verified request as long as
    a slow provider took, up to JWKS_TIMEOUT_SECONDS."""
    provider = identity_providers()
    agent = live_world.agent
    agent.user_roles_from = Agent.UserRoles.VERIFIED
    agent.identity_provider = provider.row
    services.save_agent(agent=agent, changed_by=None)
    _SlowAfterFirst.body = json.dumps({"keys": [k.public_jwk() for k in provider.keys]}).encode()
    _SlowAfterFirst.asked = 0
    genuine, made_up = provider.token(), provider.token(key=rsa_key())

    def list_tools(index: int) -> tuple[int, float]:
        if index == 1:
            time.sleep(0.5)  # the made-up key's fetch is under way
        started = time.monotonic()
        token = made_up if index == 0 else genuine
        response = listed(live_world, HTTP_COUNTERSIGN_USER_TOKEN=token)
        return response.status_code, time.monotonic() - started

    with (
        keys_served_by(provider, _SlowAfterFirst),
        override_settings(JWKS_TIMEOUT_SECONDS=3, JWKS_MIN_REFRESH_SECONDS=0),
    ):
        assert listed(live_world, HTTP_COUNTERSIGN_USER_TOKEN=genuine).status_code == 200
        (made_up_status, _), (status, took) = in_threads(2, list_tools)
    assert made_up_status == 503, "the made-up key's fetch timed out"
    assert _SlowAfterFirst.asked == 2
    assert status == 200 and took < 1.5, f"a cached key waited {took:.1f} s for the fetch"
