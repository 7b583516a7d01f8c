"""Policy rules in the admin: saved only when they compile against the tool's schema (clear
errors next to the field otherwise), versioned and audited; and the what-if page that runs
proposed rules on the last days' calls before they are saved."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from approvals.models import Status, ToolCall
from approvals.services.calls import create_call
from approvals.services.decisions import decide
from tests.approvals.conftest import with_free_form_names
from tests.conftest import World, events
from tests.tools_registry.conftest import admin_form_data
from tools_registry import services as registry_services

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

CHANGE = "/admin/tools_registry/tool/{}/change/"


def refund_call(world: World, amount: int, *, days_ago: float = 0) -> ToolCall:
    call = create_call(
        agent=world.agent,
        tool=world.tools["issue_refund"],
        arguments={
            "payment_id": "pay_0001",
            "amount_cents": amount,
            "currency": "usd",
            "reason": "r",
        },
        session_id="s-whatif",
        request_key=uuid.uuid4().hex,
    )
    if days_ago:
        ToolCall.objects.filter(pk=call.pk).update(
            created_at=timezone.now() - timedelta(days=days_ago)
        )
    return call


def test_rules_saved_in_the_admin_are_versioned_audited_and_applied(
    world: World, admin_client: Client
) -> None:
    tool = world.tools["issue_refund"]
    data = admin_form_data(admin_client.get(CHANGE.format(tool.pk)))
    rules = [{"when": "args.amount_cents <= 5000", "then": "approve"}]
    data["rules"] = json.dumps(rules)
    response = admin_client.post(CHANGE.format(tool.pk), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    tool.refresh_from_db()
    assert (tool.rules, tool.policy_version) == (rules, 2)
    (changed,) = events("tool.policy_changed", tool_name="issue_refund")
    assert changed.data["after"]["rules"] == rules
    assert refund_call(world, 1250).status == Status.APPROVED


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ('[{"when": "args.amount_cents >", "then": "approve"}]', "not valid CEL"),
        ('[{"when": "args.amout > 1", "then": "approve"}]', "args.amout is not an argument"),
        ('[{"when": "true", "then": "require", "approvals": 2, "team": "ghosts"}]', "no team"),
        ('[{"when": "args.currency > 5", "then": "refuse"}]', "different types"),
        (
            '[{"when": "args.amount_cents.exists(a, a > 0)", "then": "refuse"}]',
            "not of the kind it reads",
        ),
        ('{"when": "true"}', "Give a list of rules"),
        ("[{when: true}]", "Enter a valid JSON"),
    ],
)
def test_malformed_rules_are_refused_next_to_the_field(
    world: World, admin_client: Client, rules: str, message: str
) -> None:
    tool = world.tools["issue_refund"]
    data = admin_form_data(admin_client.get(CHANGE.format(tool.pk)))
    data["rules"] = rules
    response = admin_client.post(CHANGE.format(tool.pk), data)
    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.errors.get("rules", []))
    assert message in errors, errors
    tool.refresh_from_db()
    assert (tool.rules, tool.policy_version) == ([], 1)


def test_a_destructive_tool_cannot_be_given_an_approving_rule(
    world: World, admin_client: Client
) -> None:
    tool = world.tools["delete_customer"]
    data = admin_form_data(admin_client.get(CHANGE.format(tool.pk)))
    data["rules"] = '[{"when": "true", "then": "approve"}]'
    response = admin_client.post(CHANGE.format(tool.pk), data)
    assert "cannot be approved by rule" in " ".join(
        response.context["adminform"].form.errors["rules"]
    )


def test_the_tool_page_offers_the_what_if_and_lists_standing_approvals(
    world: World, admin_client: Client
) -> None:
    page = admin_client.get(CHANGE.format(world.tools["issue_refund"].pk)).content.decode()
    assert (
        f'formaction="/admin/tools_registry/tool/{world.tools["issue_refund"].pk}/what-if/"' in page
    )
    assert "Standing approvals" in page and "None live." in page


def test_the_what_if_counts_what_proposed_rules_would_have_changed(
    world: World, admin_client: Client, dave: Any
) -> None:
    small = refund_call(world, 1200)  # pending, would be auto-approved
    small_rejected = refund_call(world, 3000)
    decide(call_id=small_rejected.pk, reviewer=world.bob, verdict="reject", comment="Fraud.")
    large = refund_call(world, 90000)
    decide(call_id=large.pk, reviewer=world.bob, verdict="reject", comment="Too much.")
    refund_call(world, 95000)
    refund_call(world, 20000)  # no rule: as before
    refund_call(world, 1000, days_ago=30)  # outside the window
    proposed = [
        {"when": "args.amount_cents <= 5000", "then": "approve"},
        {"when": "args.amount_cents > 50000", "then": "require", "approvals": 2},
    ]
    url = f"/admin/tools_registry/tool/{world.tools['issue_refund'].pk}/what-if/"
    response = admin_client.post(url, {"rules": json.dumps(proposed), "whatif_days": "14"})
    assert response.status_code == 200
    report = response.context["report"]
    assert report.calls == 5
    assert (report.auto_approved.calls, report.auto_approved.rejected) == (2, 1)
    assert (report.more_approvals.calls, report.more_approvals.rejected) == (2, 1)
    assert report.unchanged.calls == 1
    assert report.rule_counts == [(1, 2), (2, 2)]
    page = response.content.decode()
    assert "1 call these rules would approve without a reviewer was rejected" in page
    # Nothing was saved.
    world.tools["issue_refund"].refresh_from_db()
    assert world.tools["issue_refund"].rules == []
    assert small.pk and ToolCall.objects.get(pk=small.pk).status == Status.PENDING
    # A wider window takes the older call in.
    wide = admin_client.post(url, {"rules": json.dumps(proposed), "whatif_days": "60"})
    assert wide.context["report"].calls == 6


def test_the_what_if_explains_malformed_rules_and_is_for_tool_admins_only(
    world: World, admin_client: Client
) -> None:
    url = f"/admin/tools_registry/tool/{world.tools['issue_refund'].pk}/what-if/"
    broken = admin_client.post(url, {"rules": '[{"when": "args.nope > 1", "then": "approve"}]'})
    assert broken.status_code == 400
    assert "args.nope is not an argument" in broken.content.decode()
    not_json = admin_client.post(url, {"rules": "[{"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.content.decode()
    deep = admin_client.post(url, {"rules": "[" * 100_000 + "]" * 100_000})
    assert deep.status_code == 400 and "nested too deeply" in deep.content.decode()
    too_deep = json.dumps([{"when": "!" * 1500 + "true", "then": "refuse"}])
    assert "nested too deeply" in admin_client.post(url, {"rules": too_deep}).content.decode()
    reviewer = Client()
    reviewer.force_login(world.bob)
    assert reviewer.post(url, {"rules": "[]"}).status_code == 302  # to the admin's sign-in
    assert admin_client.get(url).status_code == 200


def test_the_what_if_cannot_read_a_masked_field_out_by_counting(
    world: World, admin_client: Client
) -> None:
    """A condition on a sensitive field would tell its value one guess at a time; the
    what-if sees such fields masked, as the tool admin does everywhere else."""
    for email in ("alice@example.com", "bob@example.com"):
        create_call(
            agent=world.agent,
            tool=world.tools["update_customer"],
            arguments={"customer_id": "cus_0001", "changes": {"email": email}},
            session_id="s-whatif",
            request_key=uuid.uuid4().hex,
        )
    url = f"/admin/tools_registry/tool/{world.tools['update_customer'].pk}/what-if/"

    def matched(when: str) -> int:
        proposed = [{"when": when, "then": "approve"}]
        response = admin_client.post(url, {"rules": json.dumps(proposed)})
        assert response.status_code == 200, response.content
        report = response.context["report"]
        assert report.calls == 2
        assert "masked fields (changes.email, changes.phone) masked" in response.content.decode()
        return int(report.auto_approved.calls)

    assert matched('args.customer_id == "cus_0001"') == 2  # a plain field counts as it is
    assert matched('has(args.changes.email) && args.changes.email.startsWith("a")') == 0
    assert matched('has(args.changes.email) && args.changes.email.contains("example")') == 0
    # ``in`` looks through a list or a map: over a text (cel-python read it as a search for
    # one character) the rule is refused before it runs.
    refused = admin_client.post(
        url, {"rules": json.dumps([{"when": '"a" in args.changes.email', "then": "approve"}])}
    )
    assert refused.status_code == 400
    assert "in looks through a list or a map, not a string" in refused.content.decode()


def test_the_what_if_cannot_read_a_detected_address_or_secret_out_by_counting(
    world: World, admin_client: Client
) -> None:
    """What the detectors find (an address, a card, a key) is masked wherever a call is
    shown, in fields no tool marks: counting the calls ``args.to == "ada@example.com"``
    matched told the address (``user.id`` likewise), and ``args.body.contains("sk_live_4")``
    a key in a body, one guess at a time. Read as reviewers see them, a rule on the domain still counts."""
    key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    for to, body in (("ada@example.com", f"Your key is {key}."), ("bob@example.com", "Hi.")):
        create_call(
            agent=world.agent,
            tool=world.tools["send_email"],
            arguments={"to": to, "subject": "Hello", "body": body},
            session_id="s-whatif",
            request_key=uuid.uuid4().hex,
            on_behalf_of=to,
        )
    url = f"/admin/tools_registry/tool/{world.tools['send_email'].pk}/what-if/"

    def matched(when: str) -> int:
        proposed = [{"when": when, "then": "approve"}]
        response = admin_client.post(url, {"rules": json.dumps(proposed)})
        assert response.status_code == 200, response.content
        assert response.context["report"].calls == 2
        return int(response.context["report"].auto_approved.calls)

    assert matched('args.subject == "Hello"') == 2  # a plain field counts as it is
    assert matched('args.to.endsWith("@example.com")') == 2  # as a reviewer sees it
    assert matched('args.to == "ada@example.com"') == 0
    assert matched('args.to.startsWith("ad")') == 0
    assert matched('args.body.contains("sk_live_4")') == 0
    # Who the agent acted for, an address too, as the call's page shows it.
    assert matched('user.id.endsWith("@example.com")') == 2
    assert matched('user.id == "ada@example.com"') == 0


def test_the_what_if_counts_every_entry_of_a_map_whose_keys_read_alike(
    world: World, admin_client: Client
) -> None:
    """Read as reviewers see them, "ada@example.com" and "amy@example.com" are both
    "a***@example.com": as keys of one map, one took the other's place, and a rule on the
    map's size counted calls other than those it would decide."""
    with_free_form_names(world)
    tool = world.tools["send_email"]
    create_call(
        agent=world.agent,
        tool=tool,
        arguments={
            "to": "ada@example.com",
            "subject": "Hello",
            "body": "Hi.",
            "names": {"ada@example.com": "Ada", "amy@example.com": "Amy"},
        },
        session_id="s-whatif",
        request_key=uuid.uuid4().hex,
    )
    proposed = [{"when": "size(args.names) > 1", "then": "require", "approvals": 2}]
    url = f"/admin/tools_registry/tool/{tool.pk}/what-if/"
    response = admin_client.post(url, {"rules": json.dumps(proposed)})
    assert response.status_code == 200, response.content
    report = response.context["report"]
    assert report.calls == 1 and report.not_evaluated == 0
    assert report.more_approvals.calls == 1


def test_the_what_if_counts_a_rule_that_cannot_be_evaluated_as_the_live_policy_does(
    world: World, admin_client: Client
) -> None:
    """A rule that cannot be evaluated on a call fails closed at intake: a refusing one
    refuses a read, a requiring one asks what it would have asked. The what-if counted such
    calls as unchanged, telling the admin that rules which refuse every read without the
    argument, or ask two reviewers for every call, changed nothing."""
    world.api().submit(
        {"tool": "search_docs", "session_id": "s-whatif", "arguments": {"query": "refund"}}
    )
    url = f"/admin/tools_registry/tool/{world.tools['search_docs'].pk}/what-if/"
    proposed = [{"when": "args.limit > 5", "then": "refuse"}]
    report = admin_client.post(url, {"rules": json.dumps(proposed)}).context["report"]
    assert report.calls == 1 and report.not_evaluated == 1
    assert (report.refused.calls, report.unchanged.calls) == (1, 0)

    create_call(
        agent=world.agent,
        tool=world.tools["update_customer"],
        arguments={"customer_id": "cus_0001", "changes": {"name": "Ada"}},
        session_id="s-whatif",
        request_key=uuid.uuid4().hex,
    )
    url = f"/admin/tools_registry/tool/{world.tools['update_customer'].pk}/what-if/"
    proposed = [
        {"when": 'args.changes.plan == "enterprise"', "then": "require", "approvals": 2},
        {"when": 'args.customer_id.startsWith("cus_")', "then": "approve"},
    ]
    report = admin_client.post(url, {"rules": json.dumps(proposed)}).context["report"]
    assert report.calls == 1 and report.not_evaluated == 1
    assert (report.more_approvals.calls, report.auto_approved.calls) == (1, 0)
    assert report.unchanged.calls == 0


def test_the_what_if_counts_a_change_of_teams_and_names_them(
    world: World, admin_client: Client
) -> None:
    """A call needs its approvals from a set of teams (every approver in each). Rules that
    ask the same number of approvals from other teams decide the call differently: the
    what-if compared the number alone, and reported such a change as "as before"."""
    Group.objects.create(name="finance")
    Group.objects.create(name="security")
    tool = world.tools["issue_refund"]
    finance = {"when": "true", "then": "require", "approvals": 1, "team": "finance"}
    registry_services.update_policy(tool=tool, changes={"rules": [finance]}, changed_by=world.alice)
    tool.refresh_from_db()
    call = refund_call(world, 20000)
    assert (call.approvals_required, call.policy["teams"]) == (1, ["finance"])
    url = f"/admin/tools_registry/tool/{tool.pk}/what-if/"

    def tried(*proposed: dict[str, Any]) -> Any:
        response = admin_client.post(url, {"rules": json.dumps(list(proposed))})
        assert response.status_code == 200, response.content
        return response

    assert tried(finance).context["report"].unchanged.calls == 1

    moved = tried({**finance, "team": "security"})
    report = moved.context["report"]
    assert report.unchanged.calls == 0
    assert report.other_teams.calls == 1
    page = moved.content.decode()
    assert "needed as many approvals, from other teams" in page
    assert "from the finance team to the security team: 1 call" in page

    anyone = tried({**finance, "team": ""})
    assert anyone.context["report"].other_teams.calls == 1
    assert "from the finance team to any reviewer of the tool: 1 call" in anyone.content.decode()

    # More approvals and another team: counted as more approvals, and the teams still named.
    more = tried({**finance, "approvals": 2, "team": "security"})
    report = more.context["report"]
    assert (report.more_approvals.calls, report.other_teams.calls) == (1, 0)
    assert "from the finance team to the security team: 1 call" in more.content.decode()


def test_the_what_if_names_every_team_a_rule_that_cannot_be_evaluated_adds(
    world: World, admin_client: Client
) -> None:
    """A rule that cannot be evaluated keeps its team beside the one of the rule that held;
    the what-if says so as the reviewer's page does: members of both."""
    Group.objects.create(name="finance")
    Group.objects.create(name="security")
    create_call(
        agent=world.agent,
        tool=world.tools["update_customer"],
        arguments={"customer_id": "cus_0001", "changes": {"name": "Ada"}},
        session_id="s-whatif",
        request_key=uuid.uuid4().hex,
    )
    url = f"/admin/tools_registry/tool/{world.tools['update_customer'].pk}/what-if/"
    proposed = [
        {
            "when": 'args.changes.email.endsWith("@rival.com")',
            "then": "require",
            "approvals": 1,
            "team": "security",
        },
        {"when": "true", "then": "require", "approvals": 1, "team": "finance"},
    ]
    response = admin_client.post(url, {"rules": json.dumps(proposed)})
    assert response.status_code == 200, response.content
    report = response.context["report"]
    assert (report.not_evaluated, report.unchanged.calls) == (1, 0)
    assert report.other_teams.calls == 1
    assert (
        "from any reviewer of the tool to members of both finance and security: 1 call"
        in response.content.decode()
    )


def test_the_what_if_counts_a_typed_confirmation_added_or_dropped(
    world: World, admin_client: Client
) -> None:
    """A rule that asks the approver to type the call's target decides the call differently
    (an approver must do more), though as many approvals from the same people: the what-if
    reported it "as before"."""
    tool = world.tools["issue_refund"]
    one = {"when": "true", "then": "require", "approvals": 1}
    registry_services.update_policy(tool=tool, changes={"rules": [one]}, changed_by=world.alice)
    tool.refresh_from_db()
    call = refund_call(world, 20000)
    assert call.policy["confirm"] is False  # a write: confirmed only where a rule asks
    url = f"/admin/tools_registry/tool/{tool.pk}/what-if/"

    def tried(*proposed: dict[str, Any]) -> Any:
        response = admin_client.post(url, {"rules": json.dumps(list(proposed))})
        assert response.status_code == 200, response.content
        return response

    report = tried(one).context["report"]
    assert (report.unchanged.calls, report.other_confirmation.calls) == (1, 0)
    added = tried({**one, "confirm": True})
    report = added.context["report"]
    assert (report.unchanged.calls, report.other_confirmation.calls) == (0, 1)
    assert "with a typed confirmation added or dropped" in added.content.decode()
