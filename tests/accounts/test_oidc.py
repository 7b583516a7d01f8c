"""Single sign-on with OpenID Connect, against a real provider process
(tests/support/oidc_provider.py): the code flow end to end, teams from the groups claim."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from io import StringIO
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from accounts.models import SsoIdentity
from audit.log import record
from audit.models import AuditEvent
from tests.conftest import World
from tests.support.oidc_provider import Provider, running_provider
from tests.support.uncommitted import uncommitted
from tests.support.upstreams.raw_http import RawHttpServer, reply
from tools_registry import services as registry_services
from tools_registry.permissions import can_review

CALLBACK = "http://testserver/oidc/callback/"
TEAM_MAP = {"cs-reviewers": "reviewers", "cs-auditors": "auditors", "cs-admins": "tool-admins"}
DANA = {"password": "dana-at-the-idp", "email": "dana@example.com", "groups": ["cs-reviewers"]}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with running_provider(
        tmp_path_factory.mktemp("oidc"), redirect_uri=CALLBACK, people={"dana": DANA}
    ) as running:
        yield running


@pytest.fixture
def sso(provider: Provider) -> Iterator[Provider]:
    provider.set_people({"dana": DANA})
    with override_settings(
        **provider.settings(),
        OIDC_ENABLED=True,
        OIDC_TEAM_MAP=TEAM_MAP,
        AUTHENTICATION_BACKENDS=[
            *settings.AUTHENTICATION_BACKENDS,
            "accounts.oidc.TeamMappingOIDCBackend",
        ],
    ):
        yield provider


def sign_in_through(
    provider: Provider, username: str, password: str, *, client: Client | None = None
) -> tuple[Client, Any]:
    """What a browser does: Countersign -> the provider's form -> back with a code."""
    client = client or Client()
    start = client.get("/oidc/authenticate/?next=/audit/")
    assert start.status_code == 302 and start["Location"].startswith(f"{provider.url}/authorize")
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        form = browser.get(start["Location"])
        assert form.status_code == 200, form.text
        granted = browser.post(start["Location"], data={"username": username, "password": password})
    assert granted.status_code == 302, granted.text
    back = urlsplit(granted.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == CALLBACK
    return client, client.get(f"{back.path}?{back.query}")


def begun_sign_in(client: Client) -> str:
    """Begin a sign-in through the provider: the state its callback must bring back."""
    start = client.get("/oidc/authenticate/?next=/audit/")
    return parse_qs(urlsplit(start["Location"]).query)["state"][0]


def redirecting(status: int, location: str, *, gets: bool = False) -> RawHttpServer:
    """A provider endpoint that answers every request with a redirect to ``location``."""

    def bounce(handler: Any, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("location", location)
        handler.send_header("content-length", "0")
        handler.end_headers()

    return RawHttpServer(bounce, gets=gets)


def test_the_login_page_offers_single_sign_on_when_configured(sso: Provider) -> None:
    page = Client().get("/login/").content.decode()
    assert 'href="/oidc/authenticate/"' in page


def test_a_first_sign_in_creates_the_person_in_their_team(world: World, sso: Provider) -> None:
    reviewers = Group.objects.get(name="reviewers")
    registry_services.grant_review(tool=world.tools["send_email"], group=reviewers)

    client, landed = sign_in_through(sso, "dana", DANA["password"])

    assert landed.status_code == 302 and landed["Location"] == "/audit/"
    dana = User.objects.get(username="dana")
    assert dana.email == "dana@example.com"
    assert dana.has_usable_password() is False
    assert list(dana.groups.values_list("name", flat=True)) == ["reviewers"]
    assert can_review(dana, world.tools["send_email"])
    assert client.get("/approvals/").status_code == 200
    assert AuditEvent.objects.filter(action="auth.sso_user_created", actor_label="dana").exists()
    assert AuditEvent.objects.filter(action="auth.login", actor_label="dana").exists()


def test_removed_from_a_team_at_the_provider_loses_the_grant_at_next_sign_in(
    world: World, sso: Provider
) -> None:
    reviewers = Group.objects.get(name="reviewers")
    registry_services.grant_review(tool=world.tools["send_email"], group=reviewers)
    auditors = Group.objects.create(name="auditors")
    auditors.permissions.add(Permission.objects.get(codename="view_auditevent"))
    sign_in_through(sso, "dana", DANA["password"])
    dana = User.objects.get(username="dana")
    dana.groups.add(Group.objects.create(name="not-mapped"))

    sso.set_people({"dana": {**DANA, "groups": ["cs-auditors"]}})
    client, landed = sign_in_through(sso, "dana", DANA["password"])

    assert landed.status_code == 302
    dana = User.objects.get(username="dana")
    # The mapped teams follow the provider; a team it does not manage stays as it was.
    assert sorted(dana.groups.values_list("name", flat=True)) == ["auditors", "not-mapped"]
    assert not can_review(dana, world.tools["send_email"])
    audit_page = client.get("/audit/")
    assert audit_page.status_code == 200
    assert 'href="/approvals/"' not in audit_page.content.decode()  # no Approvals section
    change = AuditEvent.objects.filter(action="user.access_changed").order_by("-id").first()
    assert change is not None
    assert change.data["before"]["groups"] == ["not-mapped", "reviewers"]
    assert change.data["after"]["groups"] == ["auditors", "not-mapped"]


def test_a_new_email_from_the_provider_is_audited_as_an_admins_change_is(
    world: World, sso: Provider
) -> None:
    """Separation of duties knows the person an agent acts for by their e-mail, so a change
    of it is audited (``user.access_changed``): the provider's, taken at a sign-in, too. It
    was saved before the teams' "before" was read, and so never showed as a change."""
    sign_in_through(sso, "dana", DANA["password"])  # joins her team: audited
    sso.set_people({"dana": {**DANA, "email": "dana.new@example.com"}})
    since = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()

    _, landed = sign_in_through(sso, "dana", DANA["password"])

    assert landed.status_code == 302
    assert User.objects.get(username="dana").email == "dana.new@example.com"
    change = AuditEvent.objects.get(action="user.access_changed", id__gt=since)
    assert change.actor_label == "countersign"
    assert change.data["user"] == "dana"
    assert set(change.data["before"]) == set(change.data["after"]) == {"email"}
    assert change.data["before"]["email"] != change.data["after"]["email"]


def test_a_forged_state_signs_nobody_in(world: World, sso: Provider) -> None:
    client = Client()
    client.get("/oidc/authenticate/")
    response = client.get("/oidc/callback/?code=forged&state=forged")
    assert response.status_code == 400
    assert "_auth_user_id" not in client.session


def test_a_code_the_provider_refuses_is_a_failed_sign_in_not_a_500(
    world: World, sso: Provider
) -> None:
    """A reused, expired or forged code with a valid state (the back button, a double
    click): the provider answers 400 at its token endpoint."""
    client = Client()
    state = begun_sign_in(client)
    response = client.get(f"/oidc/callback/?code=forged&state={state}")
    assert response.status_code == 302 and response["Location"] == "/login/?sso=failed"
    assert "_auth_user_id" not in client.session


@override_settings(AXES_FAILURE_LIMIT=3)
def test_failed_single_sign_ons_lock_their_address_not_every_single_sign_on(
    world: World, sso: Provider
) -> None:
    """A sign-in through the provider names nobody until the provider has answered: axes
    counted its failures under no name, one count for every address, so three refused
    codes from anywhere (a forger's, or people's back buttons) refused every sign-in
    through the provider, everywhere, for the cool-off."""
    for _ in range(3):
        client = Client(REMOTE_ADDR="10.0.0.66")
        state = begun_sign_in(client)
        refused = client.get(f"/oidc/callback/?code=forged&state={state}")
        assert refused.status_code in (302, 429)
    # That address is locked (the lockout, audited) ...
    assert AuditEvent.objects.filter(action="auth.locked_out", data__ip="10.0.0.66").exists()
    client = Client(REMOTE_ADDR="10.0.0.66")
    state = begun_sign_in(client)
    assert client.get(f"/oidc/callback/?code=forged&state={state}").status_code == 429
    # ... and no other: dana signs in from hers.
    client, landed = sign_in_through(sso, "dana", DANA["password"], client=Client())
    assert landed.status_code == 302 and landed["Location"] == "/audit/"
    assert "_auth_user_id" in client.session


def test_a_provider_that_never_answers_is_a_failed_sign_in_within_a_timeout(
    world: World, sso: Provider
) -> None:
    """mozilla-django-oidc waits for the provider without end unless told otherwise: a
    token endpoint that takes the request and never answers held the web thread (one of
    WEB_THREADS, which serve the agents too) for as long as the provider did."""

    def never_answer(handler: Any, body: bytes) -> None:
        time.sleep(30)  # then hangs up: the test ends either way
        handler.close_connection = True

    silent = RawHttpServer(never_answer)
    try:
        # A one-second limit (the default is ten): the sign-in must end on it, not on the
        # provider's hang-up 30 s later.
        with override_settings(OIDC_OP_TOKEN_ENDPOINT=f"{silent.url}/token", OIDC_TIMEOUT=1):
            client = Client()
            state = begun_sign_in(client)
            began = time.monotonic()
            response = client.get(f"/oidc/callback/?code=any&state={state}")
            took = time.monotonic() - began
    finally:
        silent.close()
    assert response.status_code == 302 and response["Location"] == "/login/?sso=failed"
    assert took < 6, f"the sign-in waited {took:.0f} s for the provider"


@pytest.mark.parametrize("status", [307, 308])
def test_a_provider_endpoint_that_redirects_is_not_followed_with_the_client_secret(
    world: World, sso: Provider, status: int
) -> None:
    """requests follows a 307 or 308 with the same body: the client secret, the code and
    its verifier went to whatever host the token endpoint's answer named."""
    caught: list[bytes] = []

    def catch(handler: Any, body: bytes) -> None:
        caught.append(body)
        reply(handler, 400, {"error": "invalid_grant"})

    elsewhere = RawHttpServer(catch, gets=True)
    port = elsewhere.url.rsplit(":", 1)[1]
    bouncer = redirecting(status, f"http://localhost:{port}/token")
    try:
        with override_settings(OIDC_OP_TOKEN_ENDPOINT=f"{bouncer.url}/token"):
            client = Client()
            state = begun_sign_in(client)
            response = client.get(f"/oidc/callback/?code=any&state={state}")
    finally:
        bouncer.close()
        elsewhere.close()
    assert response.status_code == 302 and response["Location"] == "/login/?sso=failed"
    assert caught == [], "the token request was sent on to the host the redirect named"


def _impostor_claims(provider: Provider) -> dict[str, Any]:
    return {"sub": "sub-dana", "preferred_username": "dana", "groups": ["cs-admins"]}


def _provider_keys(provider: Provider) -> dict[str, Any]:
    return httpx.get(f"{provider.url}/jwks", timeout=10).json()


@pytest.mark.parametrize(
    ("setting", "answer"),
    [("OIDC_OP_USER_ENDPOINT", _impostor_claims), ("OIDC_OP_JWKS_ENDPOINT", _provider_keys)],
    ids=["user-info", "key-set"],
)
def test_a_provider_endpoint_read_that_redirects_is_a_failed_sign_in(
    world: World, sso: Provider, setting: str, answer: Any
) -> None:
    """The claims (the teams among them) and the keys that decide which ID tokens are
    genuine come from the endpoint named, never from a host its answer points at: here
    claims of another person's teams, or the provider's own keys served elsewhere."""
    asked: list[str] = []
    body = answer(sso)

    def elsewhere_answers(handler: Any, _: bytes) -> None:
        asked.append(handler.path)
        reply(handler, 200, body)

    elsewhere = RawHttpServer(elsewhere_answers, gets=True)
    bouncer = redirecting(302, f"{elsewhere.url}/moved", gets=True)
    try:
        with override_settings(**{setting: f"{bouncer.url}/endpoint"}):
            client, landed = sign_in_through(sso, "dana", DANA["password"])
    finally:
        bouncer.close()
        elsewhere.close()
    assert landed["Location"].startswith("/login/?sso=failed")
    assert "_auth_user_id" not in client.session
    assert asked == []


def test_a_deactivated_person_stays_out(world: World, sso: Provider) -> None:
    sign_in_through(sso, "dana", DANA["password"])
    User.objects.filter(username="dana").update(is_active=False)
    client, landed = sign_in_through(sso, "dana", DANA["password"])
    assert landed["Location"].startswith("/login/?sso=failed")
    assert "_auth_user_id" not in client.session


def test_a_name_at_the_provider_never_opens_an_account_it_is_not_linked_to(
    world: World, sso: Provider
) -> None:
    """At many providers people choose their preferred_username: someone calling themselves
    "admin" there must not become Countersign's admin."""
    User.objects.create_superuser("admin", "admin@example.com", "local-admin-password")
    sso.set_people(
        {"mallory": {"password": "m", "preferred_username": "admin", "groups": ["cs-admins"]}}
    )

    client, landed = sign_in_through(sso, "mallory", "m")

    assert landed.status_code == 302 and landed["Location"].startswith("/login/?sso=failed")
    assert "_auth_user_id" not in client.session
    assert not SsoIdentity.objects.exists()
    refused = AuditEvent.objects.get(action="auth.sso_refused")
    assert refused.outcome == "name_taken"
    assert refused.data["username"] == "admin" and refused.data["sub"] == "sub-mallory"


def test_a_person_keeps_their_account_when_their_name_changes_and_nobody_takes_it_over(
    world: World, sso: Provider
) -> None:
    sign_in_through(sso, "dana", DANA["password"])
    dana = User.objects.get(username="dana")
    assert dana.sso_identity.subject == "sub-dana"

    # Dana is renamed at the provider; her sub stays, and so does her account.
    sso.set_people({"dana": {**DANA, "preferred_username": "dana.smith"}})
    client, landed = sign_in_through(sso, "dana", DANA["password"])
    assert landed.status_code == 302 and landed["Location"] == "/audit/"
    assert client.session["_auth_user_id"] == str(dana.pk)
    assert not User.objects.filter(username="dana.smith").exists()

    # Someone else given the name "dana" later is refused, not let into her account.
    sso.set_people({"newdana": {**DANA, "preferred_username": "dana"}})
    client, landed = sign_in_through(sso, "newdana", DANA["password"])
    assert landed["Location"].startswith("/login/?sso=failed")
    assert "_auth_user_id" not in client.session


def test_an_admin_links_a_local_account_to_a_person_at_the_provider(
    world: World, sso: Provider
) -> None:
    erin = User.objects.create_user("erin", "erin@example.com", "erins-old-password")
    sso.set_people({"erin": {"password": "e", "sub": "00u-erin-7"}})
    assert sign_in_through(sso, "erin", "e")[1]["Location"].startswith("/login/?sso=failed")

    out = StringIO()
    call_command("link_sso", "erin", "00u-erin-7", stdout=out)

    client, landed = sign_in_through(sso, "erin", "e")
    assert landed["Location"] == "/audit/"
    assert client.session["_auth_user_id"] == str(erin.pk)
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    assert "00u-erin-7" in admin.get(f"/admin/auth/user/{erin.pk}/change/").content.decode()
    linked = AuditEvent.objects.get(action="auth.sso_linked")
    assert linked.data["username"] == "erin" and linked.data["replaced"] == ""
    with pytest.raises(CommandError, match="No account named"):
        call_command("link_sso", "nobody", "00u-x")


def test_link_sso_signs_out_the_accounts_a_subject_leaves(world: World) -> None:
    """Moved to erin, frank's subject still held frank's sessions: whoever signed in through
    the provider as frank (the person the subject is, now erin's) stayed signed in as him.
    So did erin's own, signed in through the subject she had before. Others stay."""
    erin = User.objects.create_user("erin", "erin@example.com", "pw-erin")
    frank = User.objects.create_user("frank", "frank@example.com", "pw-frank")
    SsoIdentity.objects.create(user=frank, subject="00u-7")
    SsoIdentity.objects.create(user=erin, subject="00u-erin-old")
    clients = {}
    for person in (erin, frank, world.bob):
        clients[person.username] = Client()
        clients[person.username].force_login(person)

    call_command("link_sso", "erin", "00u-7", stdout=StringIO())

    answers = {name: client.get("/account/") for name, client in clients.items()}
    assert answers["frank"].status_code == 302 and answers["erin"].status_code == 302
    assert answers["bob"].status_code == 200
    assert SsoIdentity.objects.get().user == erin
    # Linked again to the subject she has: nothing leaves, no one is signed out.
    erin_again = Client()
    erin_again.force_login(erin)
    call_command("link_sso", "erin", "00u-7", stdout=StringIO())
    assert erin_again.get("/account/").status_code == 200


def test_link_sso_refuses_a_subject_too_long_to_keep(world: World) -> None:
    """A sub longer than the link keeps was a database error's traceback."""
    User.objects.create_user("erin", "erin@example.com", "x")
    with pytest.raises(CommandError, match="at most 255 characters"):
        call_command("link_sso", "erin", "s" * 256, stdout=StringIO())
    assert not SsoIdentity.objects.exists()
    call_command("link_sso", "erin", "s" * 255, stdout=StringIO())
    assert SsoIdentity.objects.get().subject == "s" * 255


def test_the_upgrade_links_accounts_made_by_earlier_sso_sign_ins(world: World) -> None:
    """Accounts made at a first SSO sign-in before links existed: their creation event
    recorded the sub, and the migration links each to it. Others stay unlinked."""
    fran = User.objects.create_user("fran")
    record(action="auth.sso_user_created", actor=fran, outcome="ok", data={"sub": "sub-fran"})
    User.objects.create_user("gail", password="local")
    migration = importlib.import_module("accounts.migrations.0001_sso_identities")

    migration.link_accounts_made_by_sso(django_apps, None)
    migration.link_accounts_made_by_sso(django_apps, None)  # and again: nothing changes

    assert list(SsoIdentity.objects.values_list("user__username", "subject")) == [
        ("fran", "sub-fran")
    ]


def test_a_reauthentication_through_the_provider_makes_the_sign_in_recent(
    world: World, sso: Provider
) -> None:
    """A person with no password proves who they are at the provider again before a
    destructive approval: the provider is asked to make them sign in anew, and coming back
    stamps the session (mozilla-django-oidc skips Django's sign-in for the session's own
    person, which left the re-authentication page asking for ever)."""
    from django.test import RequestFactory

    from approvals import reauth

    client, landed = sign_in_through(sso, "dana", DANA["password"])
    assert landed.status_code == 302
    session = client.session
    session[reauth.SESSION_KEY] = 0  # signed in long ago
    session.save()
    page = client.get("/approvals/reauthenticate/?next=/approvals/")
    assert page.status_code == 200 and page.context["sso_url"]
    start = client.get(page.context["sso_url"])
    assert start.status_code == 302
    asked = parse_qs(urlsplit(start["Location"]).query)
    assert (asked["prompt"], asked["max_age"]) == (["login"], ["0"])
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        browser.get(start["Location"])
        granted = browser.post(
            start["Location"], data={"username": "dana", "password": DANA["password"]}
        )
    back = urlsplit(granted.headers["location"])
    done = client.get(f"{back.path}?{back.query}")
    assert done.status_code == 302 and done["Location"] == "/approvals/"
    request = RequestFactory().get("/")
    request.session = client.session
    assert reauth.is_recent(request)
    # A plain sign-in is not asked to prompt again.
    plain = Client().get("/oidc/authenticate/?next=/audit/")
    assert "prompt" not in parse_qs(urlsplit(plain["Location"]).query)


def test_a_round_trip_not_asked_as_a_reauthentication_does_not_make_the_sign_in_recent(
    world: World, sso: Provider
) -> None:
    """A return from the provider that was not asked to have the person sign in again (the
    parameter dropped on the way) is a refresh: a provider holding a session would have
    answered without asking anything."""
    from django.test import RequestFactory

    from approvals import reauth

    client, _ = sign_in_through(sso, "dana", DANA["password"])
    session = client.session
    session[reauth.SESSION_KEY] = 0
    session.save()
    start = client.get("/oidc/authenticate/?next=/approvals/")
    assert "prompt" not in parse_qs(urlsplit(start["Location"]).query)
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        browser.get(start["Location"])
        granted = browser.post(
            start["Location"], data={"username": "dana", "password": DANA["password"]}
        )
    back = urlsplit(granted.headers["location"])
    assert client.get(f"{back.path}?{back.query}").status_code == 302
    request = RequestFactory().get("/")
    request.session = client.session
    assert not reauth.is_recent(request)


def test_deactivating_a_person_ends_the_sessions_they_signed_in_through_the_provider(
    world: World, sso: Provider
) -> None:
    """A session made by a password sign-in ends when its account is deactivated (Django's
    ModelBackend no longer returns an inactive user); one made through single sign-on must
    too: the admin deactivating someone who left expects them out at once, not at their
    next sign-in."""
    reviewers = Group.objects.get(name="reviewers")
    registry_services.grant_review(tool=world.tools["send_email"], group=reviewers)
    client, landed = sign_in_through(sso, "dana", DANA["password"])
    assert landed.status_code == 302
    assert client.get("/account/").status_code == 200

    User.objects.filter(username="dana").update(is_active=False)

    page = client.get("/account/")
    assert page.status_code == 302 and page["Location"].startswith("/login/")


@pytest.mark.parametrize(
    "claims",
    [
        {"preferred_username": "d" * 151},  # longer than an account's name may be
        {"preferred_username": "dana\x00"},  # PostgreSQL stores no NUL
        {"sub": "s" * 256},
        {"email": "d" * 250 + "@example.com"},
    ],
    ids=["long-name", "nul-name", "long-sub", "long-email"],
)
def test_claims_the_accounts_cannot_hold_are_a_failed_sign_in_not_a_500(
    world: World, sso: Provider, claims: dict[str, Any]
) -> None:
    """At many providers people choose their own name: one Countersign cannot store is a
    refused sign-in (audited as a failed one), not a server error."""
    sso.set_people({"dana": {**DANA, **claims}})
    client = Client(raise_request_exception=False)
    start = client.get("/oidc/authenticate/?next=/audit/")
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        granted = browser.post(
            start["Location"], data={"username": "dana", "password": DANA["password"]}
        )
    back = urlsplit(granted.headers["location"])
    landed = client.get(f"{back.path}?{back.query}")
    assert landed.status_code == 302 and landed["Location"].startswith("/login/?sso=failed")
    assert "_auth_user_id" not in client.session
    assert not User.objects.filter(username__startswith="d").exists()


def test_a_sign_in_the_provider_passed_on_from_a_session_it_held_is_not_recent(
    world: World, sso: Provider
) -> None:
    """Signing out and in again through the provider, which still holds the person's session
    from an hour ago and asks nothing, must not count as the fresh sign-in a destructive
    approval needs: the re-authentication page refuses exactly that from the provider, and
    a new Countersign session is no proof either. The sign-in counts from when the provider
    says the person signed in (the ID token's auth_time)."""
    from django.test import RequestFactory

    from approvals import reauth

    sso.set_people({"dana": {**DANA, "signed_in_seconds_ago": 3600}})
    client, landed = sign_in_through(sso, "dana", DANA["password"])
    assert landed.status_code == 302 and "_auth_user_id" in client.session
    request = RequestFactory().get("/")
    request.session = client.session
    assert not reauth.is_recent(request)

    # Signing in at the provider anew (as the re-authentication asks) is recent.
    sso.set_people({"dana": DANA})
    client, _ = sign_in_through(sso, "dana", DANA["password"])
    request.session = client.session
    assert reauth.is_recent(request)


def test_an_error_answer_to_no_sign_in_begun_here_signs_nobody_out(
    world: World, sso: Provider
) -> None:
    """mozilla-django-oidc signs the person out on any error answer at the callback: a plain
    link on another site (a GET, sent with the session cookie) signed reviewers out, which
    the POST-only sign-out page exists to prevent. Only an answer to a sign-in this browser
    began (its state) ends the session."""
    client, _ = sign_in_through(sso, "dana", DANA["password"])
    dana = User.objects.get(username="dana")

    forged = client.get("/oidc/callback/?error=access_denied&state=made-up")
    assert forged.status_code == 302
    assert client.session.get("_auth_user_id") == str(dana.pk)

    # The provider's own error answer to a sign-in begun here still ends it, as before.
    state = begun_sign_in(client)
    client.get(f"/oidc/callback/?error=access_denied&state={state}")
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize("groups", [5, {"cs-reviewers": True}, True])
def test_a_teams_claim_of_another_shape_puts_nobody_in_a_team(
    world: World, sso: Provider, groups: Any
) -> None:
    """A provider's teams claim that is neither a name nor a list of names (a number, an
    object) is no team, not a 500 at the callback."""
    Group.objects.get_or_create(name="reviewers")
    sso.set_people({"dana": {**DANA, "groups": groups}})
    _, landed = sign_in_through(sso, "dana", DANA["password"])
    assert landed.status_code == 302 and landed["Location"] == "/audit/"
    assert not User.objects.get(username="dana").groups.exists()


def test_an_auth_time_no_date_can_hold_is_no_recent_sign_in_not_a_500(
    world: World, sso: Provider
) -> None:
    """A provider that gives auth_time in milliseconds (or any number past the year 9999)
    signs the person in, not recent: it was a 500 at the callback for every sign-in."""
    import time

    from django.test import RequestFactory

    from approvals import reauth

    now = int(time.time())
    sso.set_people({"dana": {**DANA, "signed_in_seconds_ago": now - now * 1000}})
    client, landed = sign_in_through(sso, "dana", DANA["password"])
    assert landed.status_code == 302 and "_auth_user_id" in client.session
    request = RequestFactory().get("/")
    request.session = client.session
    assert not reauth.is_recent(request)


def test_a_provider_on_this_machine_is_not_reached_through_the_environments_proxy(
    world: World, sso: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain http to the provider is allowed on this machine only, as nothing on the way can
    read it: an egress proxy in the environment (HTTP_PROXY, no NO_PROXY) would take the
    client secret and the code, in plain text, off this machine to whatever the proxy calls
    that address, and its answer (keys, claims) would decide who signs in."""
    caught: list[str] = []

    def catch(handler: Any, body: bytes) -> None:
        caught.append(handler.path)
        reply(handler, 502, {"error": "proxied"})

    proxy = RawHttpServer(catch, gets=True)
    client = Client()
    start = client.get("/oidc/authenticate/?next=/audit/")
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        browser.get(start["Location"])
        granted = browser.post(start["Location"], data={"username": "dana", **DANA})
    back = urlsplit(granted.headers["location"])
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        landed = client.get(f"{back.path}?{back.query}")
    finally:
        proxy.close()
    assert caught == [], "the provider was asked through the proxy"
    assert landed.status_code == 302 and not landed["Location"].startswith("/login/")
    assert User.objects.filter(username="dana").exists()


def test_a_provider_whose_clock_is_a_little_ahead_signs_people_in(
    world: World, sso: Provider
) -> None:
    """An ID token issued (iat) a few seconds in our future, by a provider whose clock is
    ahead of ours, was PyJWT's "not yet valid" through the callback: a 500 for everyone."""
    sso.set_people({"dana": {**DANA, "id_token": {"clock_ahead_seconds": 30}}})
    client, landed = sign_in_through(
        sso, "dana", DANA["password"], client=Client(raise_request_exception=False)
    )
    assert landed.status_code == 302 and landed["Location"] == "/audit/"
    assert "_auth_user_id" in client.session


def test_an_expired_id_token_is_a_failed_sign_in_not_a_500(world: World, sso: Provider) -> None:
    sso.set_people({"dana": {**DANA, "id_token": {"clock_ahead_seconds": -7200}}})
    client, landed = sign_in_through(
        sso, "dana", DANA["password"], client=Client(raise_request_exception=False)
    )
    assert landed.status_code == 302 and landed["Location"] == "/login/?sso=failed"
    assert "_auth_user_id" not in client.session
    assert not User.objects.filter(username="dana").exists()


def test_an_id_token_issued_to_another_application_signs_nobody_in(
    world: World, sso: Provider
) -> None:
    """The ID token names the application it was issued to (aud): one for another
    application at the same provider proves nothing to this one."""
    sso.set_people({"dana": {**DANA, "id_token": {"aud": ["another-application"]}}})
    client, landed = sign_in_through(sso, "dana", DANA["password"])
    assert landed.status_code == 302 and landed["Location"] == "/login/?sso=failed"
    assert "_auth_user_id" not in client.session
    assert not User.objects.filter(username="dana").exists()


def test_user_info_about_another_person_than_the_id_token_signs_nobody_in(
    world: World, sso: Provider
) -> None:
    """The claims (the name, the teams) come from the user-info endpoint; OpenID Connect has
    them used only when they are about the person the ID token is (the same sub)."""
    sso.set_people({"dana": {**DANA, "id_token": {"sub": "sub-someone-else"}}})
    client, landed = sign_in_through(sso, "dana", DANA["password"])
    assert landed.status_code == 302 and landed["Location"] == "/login/?sso=failed"
    assert "_auth_user_id" not in client.session
    assert not User.objects.filter(username="dana").exists()


def test_a_reauthentication_through_the_provider_asks_for_the_code_of_a_person_with_an_app(
    world: World, sso: Provider
) -> None:
    """The password's re-authentication asks a person with an authenticator app for a fresh
    code too; the provider's asks it after the round trip (a new sign-in, then the code)."""
    from django.test import RequestFactory
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from approvals import reauth
    from tests.support.totp import code_for

    client, _ = sign_in_through(sso, "dana", DANA["password"])
    device = TOTPDevice.objects.create(user=User.objects.get(username="dana"), confirmed=True)
    assert client.post("/account/two-factor/verify/", {"code": code_for(device)}).status_code == 302
    session = client.session
    session[reauth.SESSION_KEY] = 0  # signed in long ago
    session.save()

    start = client.get("/oidc/authenticate/?next=/approvals/&reauthenticate=1")
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        granted = browser.post(
            start["Location"], data={"username": "dana", "password": DANA["password"]}
        )
    back = urlsplit(granted.headers["location"])
    assert client.get(f"{back.path}?{back.query}")["Location"] == "/approvals/"
    held = client.get("/approvals/")
    assert held.status_code == 302 and held["Location"].startswith("/account/two-factor/")

    TOTPDevice.objects.filter(pk=device.pk).update(last_t=-1)  # the app's next code
    device.refresh_from_db()
    assert client.post("/account/two-factor/verify/", {"code": code_for(device)}).status_code == 302
    request = RequestFactory().get("/")
    request.session = client.session
    assert reauth.is_recent(request)


@pytest.mark.parametrize("issuer", ["https://another-tenant.example.com", None])
def test_an_id_token_from_another_issuer_signs_nobody_in(
    world: World, sso: Provider, issuer: str | None
) -> None:
    """The ID token names the provider that issued it (iss): with OIDC_OP_ISSUER set (the
    tests set it to the provider's), one that names another, or none, proves nothing here,
    though keys the provider's JWKS endpoint serves signed it (another tenant's, say)."""
    sso.set_people({"dana": {**DANA, "id_token": {"iss": issuer}}})
    client, landed = sign_in_through(
        sso, "dana", DANA["password"], client=Client(raise_request_exception=False)
    )
    assert landed.status_code == 302 and landed["Location"] == "/login/?sso=failed"
    assert "_auth_user_id" not in client.session
    assert not User.objects.filter(username="dana").exists()
    assert AuditEvent.objects.filter(action="auth.login_failed").exists()


@pytest.mark.parametrize(
    "setting",
    ["OIDC_OP_TOKEN_ENDPOINT", "OIDC_OP_USER_ENDPOINT", "OIDC_OP_JWKS_ENDPOINT"],
    ids=["token", "user-info", "key-set"],
)
def test_an_answer_nested_past_pythons_reader_is_a_failed_sign_in_not_a_500(
    world: World, sso: Provider, setting: str
) -> None:
    """JSON nested 200,000 deep fits in 400 kB, and Python's reader gives up on it with a
    RecursionError, which is no ValueError: the callback was a 500."""
    deep = b"[" * 200_000 + b"]" * 200_000

    def nested(handler: Any, _: bytes) -> None:
        reply(handler, 200, deep)

    provider_endpoint = RawHttpServer(nested, gets=True)
    try:
        with override_settings(**{setting: f"{provider_endpoint.url}/endpoint"}):
            client, landed = sign_in_through(sso, "dana", DANA["password"])
    finally:
        provider_endpoint.close()
    assert landed.status_code == 302 and landed["Location"] == "/login/?sso=failed"
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("made_for", ["sub-dana", "sub-someone-else"])
def test_a_first_sign_in_finished_in_two_tabs_at_once_is_not_a_500(
    world: World, sso: Provider, made_for: str
) -> None:
    """Both found no account and made one: the second's insert waited for the first's
    and failed on the name (a 500). It gets what a sign-in a moment later would: the account
    made for the same person at the provider (their sub), or the refusal of a name made
    for someone else."""

    def first_tab() -> None:
        dana = User.objects.create_user("dana", "dana@example.com")
        dana.set_unusable_password()
        dana.save(update_fields=["password"])
        SsoIdentity.objects.create(user=dana, subject=made_for)

    with uncommitted(first_tab, commits_after=3):
        client, landed = sign_in_through(sso, "dana", DANA["password"])

    dana = User.objects.get(username="dana")
    if made_for == "sub-dana":
        assert landed.status_code == 302 and landed["Location"] == "/audit/"
        assert client.session["_auth_user_id"] == str(dana.pk)
        assert list(dana.groups.values_list("name", flat=True)) == ["reviewers"]
    else:
        assert landed.status_code == 302 and landed["Location"] == "/login/?sso=failed"
        assert "_auth_user_id" not in client.session
        assert AuditEvent.objects.get(action="auth.sso_refused").outcome == "name_taken"
