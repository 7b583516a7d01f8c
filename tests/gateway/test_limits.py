"""Rate limits and session rounds are exact under concurrency: N admitted, never N + 1."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import limits as limits_library
import pytest
from django.conf import settings
from django.test import override_settings

from approvals.models import ToolCall
from gateway import coordination, limits
from gateway.models import AgentSession
from tests.conftest import World, clear_shared_state
from tests.gateway.conftest import SEND_EMAIL, in_threads
from tools_registry.models import Agent, Tool


def _codes(world: World, bodies: list[dict]) -> Counter:
    def submit(index: int) -> str:
        response = world.api().submit(bodies[index], key=str(uuid.uuid4()))
        if response.status_code == 202:
            return "accepted"
        assert response.status_code == 429, response.content
        if response.json()["error"]["code"] == "rate_limited":
            assert 1 <= int(response["Retry-After"]) <= 60
        return response.json()["error"]["code"]

    return Counter(in_threads(len(bodies), submit))


@pytest.mark.django_db(transaction=True)
def test_the_rate_limit_per_agent_admits_exactly_n_under_threads(live_world: World) -> None:
    for limit in (7, 12, 1):
        clear_shared_state()
        ToolCall.objects.all().delete()
        Tool.objects.filter(name="send_email").update(rate_limit_per_agent=f"{limit}/minute")
        bodies = [{**SEND_EMAIL, "session_id": f"s-{limit}-{i}"} for i in range(30)]
        codes = _codes(live_world, bodies)
        assert codes == {"accepted": limit, "rate_limited": 30 - limit}, codes
        assert ToolCall.objects.count() == limit


@pytest.mark.django_db(transaction=True)
def test_the_rate_limit_per_end_user_admits_exactly_n_per_user(live_world: World) -> None:
    Tool.objects.filter(name="send_email").update(
        rate_limit_per_agent="", rate_limit_per_user="3/minute"
    )
    users = ["ada@example.com", "grace@example.com", "Ada@Example.com "]
    bodies = [
        {**SEND_EMAIL, "session_id": f"s-{i}", "on_behalf_of": users[i % 3]} for i in range(24)
    ]
    codes = _codes(live_world, bodies)
    # Ada is named two ways; her calls share one window.
    assert codes == {"accepted": 6, "rate_limited": 18}, codes
    per_user = Counter(c.on_behalf_of.strip().lower() for c in ToolCall.objects.all())
    assert per_user == {"ada@example.com": 3, "grace@example.com": 3}


def test_the_window_moves(world: World) -> None:
    """The refusal's Retry-After is long enough: after it, a call fits again. (A window of
    three seconds, not one: on a busy machine three requests took longer than a second, and
    the window had moved before the third.)"""
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="2/3 seconds")
    assert world.api().submit(SEND_EMAIL).status_code == 202
    assert world.api().submit(SEND_EMAIL).status_code == 202
    refused = world.api().submit(SEND_EMAIL)
    assert refused.status_code == 429
    wait = int(refused["Retry-After"])
    assert 1 <= wait <= 3
    time.sleep(wait + 0.05)
    assert world.api().submit(SEND_EMAIL).status_code == 202


def test_a_call_refused_by_the_rate_limit_spends_no_round(world: World) -> None:
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="2/minute")
    for _ in range(3):
        world.api().submit(SEND_EMAIL)
    assert AgentSession.objects.get(agent=world.agent, session_id="run-1").rounds == 2


def test_a_call_a_rule_refuses_spends_nothing_of_the_rate_limit(world: World) -> None:
    """A refusal rolls back everything the call took; Redis is not rolled back, so the
    windows are taken last, once no rule refuses. And a call the rate limit refuses leaves
    no call behind."""
    Tool.objects.filter(name="send_email").update(
        rate_limit_per_agent="2/minute",
        rules=[{"when": 'args.subject == "spam"', "then": "refuse"}],
    )
    spam = {**SEND_EMAIL, "arguments": {**SEND_EMAIL["arguments"], "subject": "spam"}}
    for _ in range(3):
        assert world.api().submit(spam).status_code == 403
    assert [world.api().submit(SEND_EMAIL).status_code for _ in range(3)] == [202, 202, 429]
    assert ToolCall.objects.count() == 2


def test_a_call_refused_for_its_user_spends_nothing_of_the_agents_limit(world: World) -> None:
    Tool.objects.filter(name="send_email").update(
        rate_limit_per_agent="3/minute", rate_limit_per_user="1/minute"
    )
    for i in range(3):
        world.api().submit({**SEND_EMAIL, "session_id": f"s{i}", "on_behalf_of": "ada"})
    assert world.api().submit({**SEND_EMAIL, "on_behalf_of": "grace"}).status_code == 202
    assert world.api().submit({**SEND_EMAIL, "on_behalf_of": "linus"}).status_code == 202
    assert world.api().submit({**SEND_EMAIL, "on_behalf_of": "ken"}).status_code == 429


def test_a_call_refused_by_the_agents_limit_spends_nothing_of_its_users_window(
    world: World,
) -> None:
    Tool.objects.filter(name="send_email").update(
        rate_limit_per_agent="1/minute", rate_limit_per_user="2/minute"
    )
    ada = {**SEND_EMAIL, "on_behalf_of": "ada"}
    assert world.api().submit(ada).status_code == 202
    for _ in range(3):
        refused = world.api().submit(ada)
        assert refused.status_code == 429
        assert refused.json()["error"]["details"]["scope"] == "agent"
    # Lift the agent's limit: Ada has used one call of her two, not four.
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    assert world.api().submit(ada).status_code == 202
    refused = world.api().submit(ada)
    assert refused.status_code == 429
    assert refused.json()["error"]["details"]["scope"] == "user"


@pytest.mark.django_db(transaction=True)
def test_both_limits_together_are_exact_and_refusals_take_nothing_under_threads(
    live_world: World,
) -> None:
    Tool.objects.filter(name="send_email").update(
        rate_limit_per_agent="5/minute", rate_limit_per_user="3/minute"
    )
    users = ["ada", "grace", "linus"]
    bodies = [
        {**SEND_EMAIL, "session_id": f"s-{i}", "on_behalf_of": users[i % 3]} for i in range(30)
    ]
    codes = _codes(live_world, bodies)
    assert codes == {"accepted": 5, "rate_limited": 25}, codes
    # Each user's window holds exactly that user's admitted calls: no refused call,
    # whichever window refused it, took anything from another.
    tool = Tool.objects.get(name="send_email")
    [per_user] = limits.parse("3/minute")
    admitted = Counter(c.on_behalf_of for c in ToolCall.objects.all())
    for user in users:
        window = (per_user, "tool", str(tool.pk), "user", limits._user_id(user))
        stats = limits_library.strategies.MovingWindowRateLimiter(
            limits_library.storage.RedisStorage(
                settings.REDIS_URL, key_prefix=coordination.key("limits")
            )
        ).get_window_stats(*window)
        assert 3 - stats.remaining == admitted[user], (user, stats, admitted)


@override_settings(REDIS_URL="")
def test_the_embedded_mode_limits_exactly_in_memory() -> None:
    tool = Tool(pk=424242, name="embedded", rate_limit_per_agent="9/minute")
    agent = Agent(pk=434343, name="embedded-agent")
    admitted = in_threads(40, lambda _: limits.hit(tool=tool, agent=agent) is None)
    assert admitted.count(True) == 9
    refusal = limits.hit(tool=tool, agent=agent)
    assert refusal is not None and 1 <= refusal.retry_after <= 60


def test_an_unparsable_limit_is_not_enforced(world: World) -> None:
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="lots")
    for _ in range(3):
        assert world.api().submit(SEND_EMAIL).status_code == 202


@pytest.mark.django_db(transaction=True)
def test_rounds_are_exact_under_threads(live_world: World) -> None:
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="")
    Agent.objects.filter(pk=live_world.agent.pk).update(max_rounds_per_session=5)
    for session in ("alpha", "beta", "gamma"):
        bodies = [{**SEND_EMAIL, "session_id": session} for _ in range(25)]
        codes = _codes(live_world, bodies)
        assert codes == {"accepted": 5, "max_rounds_exceeded": 20}, codes
        assert AgentSession.objects.get(session_id=session).rounds == 5
        assert ToolCall.objects.filter(session_id=session).count() == 5


def test_an_end_user_named_in_another_unicode_form_shares_their_window(world: World) -> None:
    """The same person, named with the é composed and decomposed (or in full-width letters),
    as separation of duties takes them: one window, not one per spelling."""
    Tool.objects.filter(name="send_email").update(
        rate_limit_per_agent="", rate_limit_per_user="1/minute"
    )
    spellings = [
        "josé@example.com",
        "jose\u0301@example.com",
        "\uff2a\uff2f\uff33\uff25\u0301@example.com",
    ]
    codes = [
        world.api().submit({**SEND_EMAIL, "session_id": f"s-{i}", "on_behalf_of": name})
        for i, name in enumerate(spellings)
    ]
    assert [c.status_code for c in codes] == [202, 429, 429]


def test_retry_after_waits_for_every_full_window(world: World) -> None:
    """A call refused by both of its windows fits again only once both have room: its
    Retry-After is the longer wait (the agent's hour), not the first window's (the user's
    minute), after which the call would only be refused again."""
    Tool.objects.filter(name="send_email").update(
        rate_limit_per_agent="1/hour", rate_limit_per_user="1/minute"
    )
    ada = {**SEND_EMAIL, "on_behalf_of": "ada"}
    assert world.api().submit(ada).status_code == 202
    refused = world.api().submit(ada)
    assert refused.status_code == 429
    assert 3590 <= int(refused["Retry-After"]) <= 3600
    error = refused.json()["error"]
    assert error["details"] == {"scope": "agent", "limit": "1/hour"}
    assert error["message"] == "The tool's rate limit for this agent (1/hour) is used up."


@override_settings(REDIS_URL="")
def test_the_embedded_mode_waits_for_every_full_window() -> None:
    tool = Tool(
        pk=525252, name="embedded", rate_limit_per_agent="1/hour", rate_limit_per_user="1/minute"
    )
    agent = Agent(pk=535353, name="embedded-agent")
    assert limits.hit(tool=tool, agent=agent, on_behalf_of="ada") is None
    refusal = limits.hit(tool=tool, agent=agent, on_behalf_of="ada")
    assert refusal is not None
    assert (refusal.scope, refusal.limit) == ("agent", "1/hour")
    assert 3590 <= refusal.retry_after <= 3600
