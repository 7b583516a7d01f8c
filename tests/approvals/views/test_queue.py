"""The reviewer's queue: scopes, filters in the URL, keyset pages, counts, live partial."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals import selectors
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from tests.approvals.conftest import login, make_call
from tests.conftest import World
from tools_registry import services as registry_services

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


def ids_on(response) -> list[str]:
    return re.findall(r'data-call-id="([0-9a-f-]{36})"', response.content.decode())


def test_it_lists_only_pending_calls_of_tools_the_reviewer_is_granted(world: World) -> None:
    email = make_call(world, "send_email")
    refund = make_call(world, "issue_refund")
    decided = make_call(world, "send_email")
    ToolCall.objects.filter(pk=decided.pk).update(status=Status.REJECTED)
    registry_services.grant_review(tool=world.tools["issue_refund"], user=world.charlie)

    assert set(ids_on(login(world.bob).get("/approvals/"))) == {str(email.pk), str(refund.pk)}
    assert ids_on(login(world.charlie).get("/approvals/")) == [str(refund.pk)]


def test_an_outsider_sees_an_empty_queue(world: World) -> None:
    make_call(world)
    response = login(world.charlie).get("/approvals/")
    assert response.status_code == 200
    assert ids_on(response) == []


def test_the_queue_needs_a_sign_in(world: World) -> None:
    response = Client().get("/approvals/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_it_filters_by_tool_risk_agent_session_age_and_expiry(world: World, bob_client) -> None:
    from tools_registry.models import Agent

    other_agent = Agent.objects.create(name="billing-bot", owner=world.alice)
    other_agent.allowed_tools.add(*world.tools.values())
    now = timezone.now()
    old_email = make_call(
        world, "send_email", session_id="s-1", created_at=now - timedelta(hours=2)
    )
    new_email = make_call(world, "send_email", session_id="s-2")
    delete = make_call(world, "delete_customer", session_id="s-1")
    billing = make_call(world, "issue_refund", agent=other_agent, session_id="s-3")
    ToolCall.objects.filter(pk=new_email.pk).update(expires_at=now + timedelta(minutes=5))

    def shown(query: str) -> set[str]:
        return set(ids_on(bob_client.get(f"/approvals/?{query}")))

    assert shown("tool=send_email") == {str(old_email.pk), str(new_email.pk)}
    assert shown("risk=destructive") == {str(delete.pk)}
    assert shown("agent=billing-bot") == {str(billing.pk)}
    assert shown("session=s-1") == {str(old_email.pk), str(delete.pk)}
    assert shown("age=1h") == {str(old_email.pk)}
    assert shown("expiring=on") == {str(new_email.pk)}
    assert shown("tool=send_email&session=s-2") == {str(new_email.pk)}
    # Junk in the URL never breaks the page: it is ignored or matches nothing.
    assert shown("risk=nonsense&age=forever") == {
        str(c.pk) for c in (old_email, new_email, delete, billing)
    }
    assert shown("tool=no_such_tool") == set()


def test_a_rows_session_link_opens_that_agents_session_not_every_agents_of_that_name(
    world: World, bob_client
) -> None:
    """A session id is the agent's own (its rounds are counted per agent and session), and
    agents often name their runs alike ("run-1", "default"). The row's link, "Only this
    session", filtered by the id alone: the reviewer of one agent's run was shown another
    agent's calls among them, as if they were part of it."""
    from tools_registry.models import Agent

    other_agent = Agent.objects.create(name="billing-bot", owner=world.alice)
    other_agent.allowed_tools.add(*world.tools.values())
    ours = make_call(world, "send_email", session_id="run-1")
    theirs = make_call(world, "issue_refund", agent=other_agent, session_id="run-1")

    page = bob_client.get("/approvals/").content.decode()
    link = re.search(rf'id="session-{ours.pk}" href="\?([^"]+)"', page)
    assert link, page
    shown = ids_on(bob_client.get("/approvals/?" + link.group(1).replace("&amp;", "&")))
    assert shown == [str(ours.pk)]
    assert str(theirs.pk) not in shown


def test_newest_or_oldest_first(world: World, bob_client) -> None:
    now = timezone.now()
    calls = [make_call(world, created_at=now - timedelta(minutes=m)) for m in (30, 20, 10)]
    oldest_first = [str(c.pk) for c in calls]
    assert ids_on(bob_client.get("/approvals/")) == oldest_first
    assert ids_on(bob_client.get("/approvals/?order=newest")) == oldest_first[::-1]


def test_keyset_pages_walk_forward_and_back_without_offset(
    world: World, bob_client, settings
) -> None:
    settings.APPROVALS_QUEUE_PAGE_SIZE = 2
    now = timezone.now()
    calls = [make_call(world, created_at=now - timedelta(minutes=10 - m)) for m in range(5)]
    expected = [str(c.pk) for c in calls]

    seen: list[str] = []
    url = "/approvals/?tool=send_email"
    pages = []
    with CaptureQueriesContext(connection) as queries:
        while url:
            response = bob_client.get(url)
            pages.append(response)
            seen += ids_on(response)
            match = re.search(r'href="\?([^"]*after=[^"]+)" rel="next"', response.content.decode())
            url = "/approvals/?" + match.group(1).replace("&amp;", "&") if match else ""
    assert seen == expected
    assert len(pages) == 3
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)
    # The filter survives paging, and the way back gives the same pages.
    last = pages[-1].content.decode()
    back = re.search(r'href="\?([^"]*before=[^"]+)" rel="prev"', last)
    assert back and "tool=send_email" in back.group(1)
    previous = bob_client.get("/approvals/?" + back.group(1).replace("&amp;", "&"))
    assert ids_on(previous) == expected[2:4]


def test_counts_per_risk_class_follow_the_other_filters_and_stop_at_the_cap(
    world: World, bob_client, settings
) -> None:
    now = timezone.now()
    for minutes in (9, 8):
        make_call(world, "send_email", created_at=now - timedelta(minutes=minutes))
    make_call(world, "update_customer", created_at=now - timedelta(minutes=7))
    make_call(world, "delete_customer", created_at=now - timedelta(minutes=6))
    make_call(world, "delete_customer", session_id="other", created_at=now - timedelta(minutes=5))

    settings.APPROVALS_QUEUE_COUNT_CAP = 10
    page = selectors.queue_page(user=world.bob, filters=selectors.QueueFilters())
    assert (page.counts, page.capped) == ({"write": 3, "destructive": 2}, False)
    tool_only = selectors.queue_page(
        user=world.bob, filters=selectors.QueueFilters(tool="send_email")
    )
    assert tool_only.counts == {"write": 2, "destructive": 0}
    body = bob_client.get("/approvals/?session=run-1").content.decode()
    assert re.search(r'data-risk="all"[^>]*>\s*All <span class="count">4</span>', body)
    assert re.search(
        r'data-risk="destructive"[^>]*>\s*Destructive <span class="count">1</span>', body
    )

    # Past the cap the walk stops: the counts are lower bounds, marked with "+".
    settings.APPROVALS_QUEUE_COUNT_CAP = 2
    page = selectors.queue_page(user=world.bob, filters=selectors.QueueFilters())
    assert (page.counts, page.capped) == ({"write": 3, "destructive": 0}, True)
    body = bob_client.get("/approvals/").content.decode()
    assert re.search(r'data-risk="all"[^>]*>\s*All <span class="count">2\+</span>', body)


def test_an_htmx_request_gets_the_table_partial_that_polls_with_the_same_filters(
    world: World, bob_client
) -> None:
    make_call(world)
    response = bob_client.get("/approvals/?tool=send_email&order=newest", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in body
    # The tab's title first (htmx takes it from the top of the answer), then the table.
    assert body.lstrip().startswith("<title>(1) Approvals")
    assert '<div id="queue"' in body
    assert re.search(r'hx-get="/approvals/\?tool=send_email&amp;order=newest&amp;since=\d+"', body)
    assert re.search(r'hx-trigger="every \d+s"', body)
    assert response["Vary"].count("HX-Request") == 1
    # The back button's history restore asks with HX-Request too, and needs the whole page.
    restore = bob_client.get(
        "/approvals/?tool=send_email",
        HTTP_HX_REQUEST="true",
        HTTP_HX_HISTORY_RESTORE_REQUEST="true",
    )
    assert "<html" in restore.content.decode()


def test_a_new_call_appears_and_a_decided_call_leaves_on_the_next_poll(
    world: World, bob_client
) -> None:
    first = make_call(world)
    assert ids_on(bob_client.get("/approvals/", HTTP_HX_REQUEST="true")) == [str(first.pk)]
    second = make_call(world)
    ToolCall.objects.filter(pk=first.pk).update(status=Status.EXPIRED)
    assert ids_on(bob_client.get("/approvals/", HTTP_HX_REQUEST="true")) == [str(second.pk)]


def test_the_query_count_does_not_grow_with_the_rows(world: World, dave, bob_client) -> None:
    def queries_for_page() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            response = bob_client.get("/approvals/")
        return len(queries.captured_queries), len(ids_on(response))

    first = make_call(world, "delete_customer")
    queries_for_page()  # warm-up: the first request of a session also touches the session
    small = queries_for_page()
    for index in range(24):
        call = make_call(
            world, "send_email" if index % 2 else "delete_customer", session_id=f"s{index}"
        )
    call = make_call(world, "delete_customer")
    # Votes and owners on the rows must not cost a query each either.
    for voter in (dave, world.bob):  # one of two approvals each: the calls stay pending
        decide(
            call_id=first.pk if voter == dave else call.pk,
            reviewer=voter,
            verdict="approve",
            confirmation="cus_0003",
            authenticated_at=timezone.now(),
        )
    large = queries_for_page()
    assert small[1] == 1 and large[1] == 26
    assert "1/2" in bob_client.get("/approvals/").content.decode()
    assert small[0] == large[0], f"1 row: {small[0]} queries, 23 rows: {large[0]} queries"


def test_the_page_query_uses_a_partial_index_on_pending_calls(world: World) -> None:
    make_call(world)
    filters = [
        selectors.QueueFilters(),
        selectors.QueueFilters(order="newest", risk="write"),
        selectors.QueueFilters(order="expiring"),
        selectors.QueueFilters(order="amount", tool="send_email"),
        selectors.QueueFilters(tool="send_email"),
        selectors.QueueFilters(agent="support-bot"),
        selectors.QueueFilters(session="run-1"),
        selectors.QueueFilters(expiring=True, order="newest"),
    ]
    partial_indexes = {
        "call_pending_idx",
        "call_pending_by_tool_idx",
        "call_pending_by_agent_idx",
        "call_pending_by_session_idx",
        "call_pending_expiry_id_idx",
        "call_pending_amount_idx",
    }
    with connection.cursor() as cursor:
        # A test table is tiny, so a sequential scan would win on cost; turning it off asks
        # whether an index CAN serve the query, which is what the index predicate decides.
        cursor.execute("SET LOCAL enable_seqscan = off")
        # Statistics of the tables as they are, as autovacuum keeps them: a test before this
        # one in the same process that committed thousands of calls (the table emptied after
        # it) left the planner costing tables that are no more.
        cursor.execute("ANALYZE approvals_toolcall, approvals_decision")
        for queue_filters in filters:
            with CaptureQueriesContext(connection) as queries:
                selectors.queue_page(user=world.bob, filters=queue_filters)
            page_sql = queries.captured_queries[-1]["sql"]
            cursor.execute("EXPLAIN " + page_sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            used = {name for name in partial_indexes if name in plan}
            assert used, f"{queue_filters}: no partial pending index in\n{plan}"
            assert "Seq Scan on approvals_toolcall" not in plan


def test_rows_whose_approvals_no_longer_stand_cost_no_queries_each(
    world: World, dave, dora
) -> None:
    """A reviewer who approved many calls waiting for a second approval leaves the team (or
    loses the grant): each of those rows then has its quorum of approvals given, and the
    queue checked each row's approvers in turn, three queries a row at every refresh (150
    on a page of 50, every 5 seconds, for every reviewer with the queue open)."""
    tool = world.tools["delete_customer"]  # two approvals
    client = login(dora)
    team = dave.groups.get()

    def approved_then_lapsed(count: int, *, by_team: bool) -> None:
        for _ in range(count):
            call = make_call(world, "delete_customer")
            if by_team:  # the call's rule asks its approvals from the reviewers team
                ToolCall.objects.filter(pk=call.pk).update(
                    policy={**call.policy, "team": team.name}
                )
                world.bob.groups.add(team)
            else:
                registry_services.grant_review(tool=tool, user=world.bob)
            for reviewer in (world.bob, dave):
                decide(
                    call_id=call.pk,
                    reviewer=reviewer,
                    verdict="approve",
                    confirmation="cus_0003",
                    authenticated_at=timezone.now(),
                )
                if reviewer == world.bob:  # his approval no longer stands for the next one
                    if by_team:
                        world.bob.groups.remove(team)
                    else:
                        registry_services.revoke_review(tool=tool, user=world.bob)

    def queries_for_page() -> tuple[int, str]:
        with CaptureQueriesContext(connection) as queries:
            body = client.get("/approvals/", HTTP_HX_REQUEST="true").content.decode()
        return len(queries.captured_queries), body

    approved_then_lapsed(1, by_team=False)
    approved_then_lapsed(1, by_team=True)
    queries_for_page()  # warm-up: the first request of a session also touches the session
    few, body = queries_for_page()
    assert body.count("1/2") == 2
    approved_then_lapsed(4, by_team=False)
    approved_then_lapsed(2, by_team=True)
    many, body = queries_for_page()
    assert ToolCall.objects.filter(status=Status.PENDING).count() == 8
    assert body.count("1/2") == 8 and "2/2" not in body
    assert many == few, f"2 rows: {few} queries, 8 rows: {many} queries"
