"""Asserted end users and role scopes: what an agent may say about its users, and what each
role may then use of the agent's allowlist."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

import pytest

from tests.conftest import World
from tools_registry import end_users, role_scopes, services
from tools_registry.end_users import Refused, identify
from tools_registry.models import Agent
from tools_registry.role_scopes import NOBODY, EndUser

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

CHECKLIST = {
    "viewer": {"risks": ["read"]},
    "support": {"risks": ["read", "write"]},
    "admin": {"risks": ["read", "write", "destructive"]},
}


@pytest.fixture
def trusted(world: World) -> Agent:
    """The world's agent, trusted to assert the checklist's roles, scoped as it says."""
    agent = world.agent
    agent.user_roles_from = Agent.UserRoles.ASSERTED
    agent.assertable_roles = ["viewer", "support", "admin"]
    agent.role_scopes = CHECKLIST
    return services.save_agent(agent=agent, changed_by=None)


def test_a_plain_string_or_nothing_names_a_user_without_roles(world: World) -> None:
    assert identify(world.agent, on_behalf_of="ada", user_token=None) == EndUser(
        id="ada", source="named"
    )
    assert identify(world.agent, on_behalf_of="", user_token=None) == NOBODY
    assert identify(world.agent, on_behalf_of={"id": "ada"}, user_token=None).roles == ()
    assert identify(world.agent, on_behalf_of={"id": "ada", "roles": []}, user_token=None).id == (
        "ada"
    )


def test_a_trusted_agent_asserts_the_roles_it_was_allowed(trusted: Agent) -> None:
    user = identify(
        trusted, on_behalf_of={"id": "ada", "roles": ["support", "viewer"]}, user_token=None
    )
    assert user == EndUser(id="ada", roles=("support", "viewer"), source="asserted")


@pytest.mark.parametrize(
    ("on_behalf_of", "path"),
    [
        ({"id": "ada", "roles": ["viewer", 7]}, "$.on_behalf_of.roles[1]"),
        ({"id": "ada", "roles": [{"role": "admin"}]}, "$.on_behalf_of.roles[0]"),
        ({"id": "ada", "roles": "admin"}, "$.on_behalf_of.roles"),
        ({"id": "ada", "roles": ["viewer"] * 33}, "$.on_behalf_of.roles"),
        ({"id": "ada", "roles": [""]}, "$.on_behalf_of.roles[0]"),
        ({"id": "ada", "roles": ["x" * 65]}, "$.on_behalf_of.roles[0]"),
        ({"id": "ada", "roles": ["view\ner"]}, "$.on_behalf_of.roles[0]"),
        ({"id": "ada", "team": "billing"}, "$.on_behalf_of.team"),
        ({"roles": ["viewer"]}, "$.on_behalf_of.id"),
        ({"id": 42}, "$.on_behalf_of.id"),
        ({"id": "a" * 151}, "$.on_behalf_of.id"),
        ("a" * 151, "$.on_behalf_of"),
        ("   ", "$.on_behalf_of"),
        (["ada"], "$.on_behalf_of"),
        (17, "$.on_behalf_of"),
    ],
)
def test_a_malformed_end_user_is_refused_with_its_path(
    trusted: Agent, on_behalf_of: Any, path: str
) -> None:
    with pytest.raises(Refused) as caught:
        identify(trusted, on_behalf_of=on_behalf_of, user_token=None)
    assert caught.value.code == end_users.INVALID_END_USER
    assert caught.value.details[0]["path"] == path


def test_an_agent_not_trusted_to_assert_roles_cannot(world: World) -> None:
    with pytest.raises(Refused) as caught:
        identify(world.agent, on_behalf_of={"id": "ada", "roles": ["admin"]}, user_token=None)
    assert caught.value.code == end_users.ROLE_NOT_ASSERTABLE
    assert "not trusted" in caught.value.message


def test_a_trusted_agent_cannot_assert_a_role_it_was_not_allowed(trusted: Agent) -> None:
    with pytest.raises(Refused) as caught:
        identify(trusted, on_behalf_of={"id": "ada", "roles": ["viewer", "root"]}, user_token=None)
    assert caught.value.code == end_users.ROLE_NOT_ASSERTABLE
    assert caught.value.details["roles"] == ["root"]


def test_each_role_uses_its_scope_of_the_allowlist(world: World, trusted: Agent) -> None:
    def usable(roles: tuple[str, ...]) -> set[str]:
        return {t.name for t in role_scopes.tools_for(trusted, EndUser(id="ada", roles=roles))}

    reads = {"search_docs", "get_customer"}
    writes = {"send_email", "update_customer", "issue_refund"}
    assert usable(("viewer",)) == reads
    assert usable(("support",)) == reads | writes
    assert usable(("admin",)) == reads | writes | {"delete_customer"}
    assert usable(("viewer", "support")) == reads | writes, "a user has what any role has"
    assert usable(()) == reads | writes | {"delete_customer"}, "no role: the whole allowlist"
    assert usable(("intern",)) == usable(()), "a role the agent does not scope adds nothing"
    assert role_scopes.roles_allowed(trusted, world.tools["issue_refund"]) == ["support", "admin"]


def test_no_role_widens_the_allowlist(world: World, trusted: Agent) -> None:
    trusted.allowed_tools.remove(world.tools["delete_customer"])
    admin = EndUser(id="root", roles=("admin",))
    assert "delete_customer" not in {t.name for t in role_scopes.tools_for(trusted, admin)}


@pytest.mark.parametrize(
    ("access", "expected"),
    [
        (Agent.UnscopedAccess.READS, {"search_docs", "get_customer"}),
        (Agent.UnscopedAccess.NOTHING, set()),
    ],
)
def test_an_admin_chooses_what_a_call_without_a_role_gets(
    trusted: Agent, access: str, expected: set[str]
) -> None:
    trusted.unscoped_access = access
    services.save_agent(agent=trusted, changed_by=None)
    assert {t.name for t in role_scopes.tools_for(trusted, NOBODY)} == expected


@pytest.mark.parametrize(
    ("role_scopes", "problem"),
    [
        ({"viewer": {"risks": ["reading"]}}, "risks are among"),
        ({"viewer": {"tools": ["launch_rocket"]}}, "no such tools: launch_rocket"),
        ({"viewer": ["read"]}, 'give "risks" and/or "tools"'),
        ({"": {"risks": ["read"]}}, "is not a role name"),
        (["viewer"], "Role scopes are an object"),
    ],
)
def test_role_scopes_that_make_no_sense_are_refused(
    world: World, role_scopes: Any, problem: str
) -> None:
    world.agent.role_scopes = role_scopes
    with pytest.raises(services.AgentInvalid) as caught:
        services.save_agent(agent=world.agent, changed_by=None)
    assert problem in str(caught.value.message_dict["role_scopes"])


def test_verified_roles_need_a_provider(world: World) -> None:
    world.agent.user_roles_from = Agent.UserRoles.VERIFIED
    with pytest.raises(services.AgentInvalid) as caught:
        services.save_agent(agent=world.agent, changed_by=None)
    assert "identity_provider" in caught.value.message_dict


def test_no_user_id_or_session_id_holds_a_character_no_reader_sees() -> None:
    """Every format character (category Cf, whatever Unicode adds) and every character the
    pages write out as hidden: the lists in role_scopes are written by hand."""
    from audit.display import HIDDEN

    hidden = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) == "Cf" or HIDDEN.match(chr(c))
    ]
    assert "\u202e" in hidden and "\U000e0041" in hidden
    assert [c for c in hidden if role_scopes.is_user_id(f"a{c}b")] == []
    assert [c for c in hidden if role_scopes.is_visible_id(f"a{c}b")] == []
    assert role_scopes.is_user_id("Zoë O'Brien (ops)") and role_scopes.is_visible_id("run-1 ü")
