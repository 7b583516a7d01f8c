"""The README and docs/ stay true to the code: their links lead somewhere, every setting read
from the environment is documented with the default the code gives it, and every management
command they name exists (and every one of the project's is named)."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path
from typing import Any

from django.core.management import get_commands

from tests.support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def prose(page: Path) -> str:
    """The page without its fenced code blocks (a shell comment is no heading)."""
    return FENCE.sub("", page.read_text())


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub gives a page: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered."""
    seen: Counter[str] = Counter()
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(page), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def test_links_between_pages_and_their_anchors_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:: not this repository's
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def settings_defaults() -> dict[str, Any]:
    """Each setting config/settings.py reads from the environment, and its default when the
    code gives it as a literal (``24 * 3600`` included; None when it is computed)."""
    tree = ast.parse((ROOT / "config" / "settings.py").read_text())
    readers = {"env_str", "env_int", "env_bool", "env_float", "env_list", "provider_endpoint"}
    found: dict[str, Any] = {}
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in readers
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            continue
        default = node.args[1] if len(node.args) > 1 else None
        # MAX_WAITS_PER_AGENT defaults to MCP_MAX_WAITS_PER_AGENT, read with its own default.
        while isinstance(default, ast.Call) and getattr(default.func, "id", "") in readers:
            default = default.args[1] if len(default.args) > 1 else None
        found[node.args[0].value] = constant(default)
    return found


def constant(node: ast.expr | None) -> Any:
    """A literal, or arithmetic on literals (``24 * 3600``); None for what is computed from
    other settings (``EMBEDDED or TESTING``) or not given."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Add):
        left, right = constant(node.left), constant(node.right)
        if isinstance(left, int) and isinstance(right, int):
            return left * right if isinstance(node.op, ast.Mult) else left + right
    return None


def test_every_setting_read_from_the_environment_is_documented() -> None:
    text = "".join(page.read_text() for page in PAGES)
    names = settings_defaults()
    assert {"DATABASE_URL", "WEBHOOK_RETENTION_SECONDS", "OIDC_OP_JWKS_ENDPOINT"} <= set(names)
    assert sorted(name for name in names if not re.search(rf"\b{name}\b", text)) == []


UNITS = {"": 1, "s": 1, "minutes": 60, "days": 24 * 3600, "KiB": 1024, "MiB": 1024 * 1024}
NUMBER = re.compile(r"\d+(?:\.\d+)?(?: (?:s|minutes|days|KiB|MiB))?")


def documented_defaults() -> list[tuple[str, str, str]]:
    """(page, setting, default) from the pages' settings tables (``| setting | meaning |
    default |``, several settings to a row matching several defaults) and from prose that
    gives a default in brackets after the name (`WEBHOOK_MAX_ATTEMPTS` (12))."""
    found = []
    for page in PAGES:
        text = prose(page)
        for row in re.findall(r"^\| (`[A-Z].*) \|$", text, re.M):
            cells = row.split(" | ")
            names = re.findall(r"`(_?[A-Z][A-Z0-9_]*)`", cells[0])
            names = [
                name if not name.startswith("_") else names[0].rsplit("_", 1)[0] + name
                for name in names
            ]
            values = re.split(r", (?=(?:[^`]*`[^`]*`)*[^`]*$)", cells[-1])
            if len(names) == len(values):
                found += [
                    (page.name, name, value) for name, value in zip(names, values, strict=True)
                ]
        for name, value in re.findall(rf"`([A-Z][A-Z0-9_]+)`\s\(({NUMBER.pattern})[),;:]", text):
            found.append((page.name, name, value))
    return found


def as_documented(value: str, default: Any) -> Any:
    """The documented default read as the code's kind of value; None if it says something
    these checks cannot read (``derived from SECRET_KEY``, ``a day``)."""
    value = value.strip().strip("`")
    if isinstance(default, bool):
        return {"on": True, "off": False}.get(value)
    if isinstance(default, int | float):
        number = NUMBER.match(value)
        if number is None:
            return None
        amount, _, unit = number[0].partition(" ")
        return float(amount) * UNITS[unit]
    return value


def test_documented_defaults_are_the_codes() -> None:
    defaults = settings_defaults()
    documented = documented_defaults()
    checked, wrong = 0, []
    for page, name, value in documented:
        default = defaults.get(name)
        if default is None or default == "":  # computed, or unset: said in words
            continue
        said = as_documented(value, default)
        if said is None:
            continue
        checked += 1
        if said != default:
            wrong.append(f"{page}: {name} is documented as {value!r}, the code says {default!r}")
    assert checked > 60, "the pages' settings tables are read"
    assert wrong == []


def test_the_management_commands_named_exist_and_each_is_named() -> None:
    text = "".join(page.read_text() for page in PAGES)  # the shell examples included
    run = set(re.findall(r"manage\.py\s+([a-z_]+)", text))
    assert {"sync_tools", "stop_agent", "rotate_webhook_secret"} <= run
    assert sorted(run - set(get_commands())) == []
    # Also named alone, as in "`expire_leases`, `reconcile_unknown`, or all with `run_sweeps`".
    named = run | set(re.findall(r"`([a-z]+_[a-z_]+)\b[^`]*`", text))
    ours = {
        path.stem
        for path in ROOT.glob("*/management/commands/*.py")
        if not path.stem.startswith("_")
    }
    assert sorted(ours - named) == []
