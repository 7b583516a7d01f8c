"""examples/: the agent loop with the OpenAI SDK imports and type-checks (it is not run:
it needs a model)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.support import ROOT

EXAMPLE = ROOT / "examples" / "openai_agent_loop.py"


def test_the_openai_example_imports() -> None:
    spec = importlib.util.spec_from_file_location("openai_agent_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main) and callable(module.run_tool)


def test_the_openai_example_type_checks(tmp_path: object) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--config-file", "/dev/null", "--strict",
            "--ignore-missing-imports", "--cache-dir", str(ROOT / ".mypy_cache" / "examples"),
            "--follow-imports", "silent", str(EXAMPLE),
        ],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={"MYPYPATH": str(ROOT / "clients" / "python"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
