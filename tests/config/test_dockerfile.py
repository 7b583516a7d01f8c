"""The Dockerfile's image: its processes run as an unprivileged user, who can write where
they must and nowhere else. (No Docker engine on the test machines: the file is read.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from django.conf import settings

from config.celery import app
from tests.support import ROOT


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions in order, each as (keyword, arguments), continuation
    lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def the_user_of(steps: list[tuple[str, str]]) -> tuple[str, str]:
    """The uid and gid the image's processes run as: its last USER, with the numbers
    useradd gave the names."""
    users = [arguments for keyword, arguments in steps if keyword == "USER"]
    assert users, "no USER: every process of the image runs as root"
    user, _, group = users[-1].partition(":")
    return user, group or user


def test_the_image_runs_its_processes_as_an_unprivileged_user() -> None:
    """As root, a flaw in the app or one of its dependencies could rewrite the code, the
    image's system and every file of a mounted volume."""
    steps = instructions()
    user, group = the_user_of(steps)
    assert user not in {"0", "root"} and group not in {"0", "root"}, (user, group)
    # Numeric, so an orchestrator can tell it is not root without the image's /etc/passwd.
    assert user.isdigit() and group.isdigit(), (user, group)
    keywords = [keyword for keyword, _ in steps]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    # Nothing after USER installs or changes ownership (it could not, and should not need to).
    assert all(keyword not in {"RUN", "COPY", "ADD"} for keyword in keywords[last_user:])
    assert keywords.index("CMD") > last_user
    creation = " ".join(arguments for keyword, arguments in steps if keyword == "RUN")
    assert f"--uid {user}" in creation and f"--gid {group}" in creation, creation


def test_the_image_lets_its_user_write_var_and_the_anchor_and_nothing_else() -> None:
    """The settings create var/static at every start and beat keeps its schedule under
    var/; the audit anchor is appended to on the volume docker-compose.yml mounts. A new
    named volume takes the owner of the image's directory, so /anchor must be the user's
    in the image, or beat could never write the anchor."""
    steps = instructions()
    chowns = [
        arguments.split("chown", 1)[1].split("&&")[0].split()
        for keyword, arguments in steps
        if keyword == "RUN" and "chown" in arguments
    ]
    owned = {path for words in chowns for path in words[1:]}
    assert all(not words[0].startswith("-") for words in chowns), (
        "no recursive chown: the code stays root's"
    )
    assert owned == {"/app/var", "/anchor"}, owned
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    app_env = compose["x-app"]["environment"]
    assert Path(app_env["AUDIT_ANCHOR_PATH"]).parent == Path("/anchor")
    assert "anchor:/anchor" in compose["x-app"]["volumes"]


def test_beat_keeps_its_schedule_file_under_var() -> None:
    """Celery beat wrote ``celerybeat-schedule`` into its working directory, the image's
    /app, which its unprivileged user cannot write: beat stopped at start, and with it the
    sweeps and the audit sealing."""
    schedule = Path(app.conf.beat_schedule_filename)
    assert schedule.is_absolute(), schedule
    assert schedule.parent == settings.VAR_DIR
