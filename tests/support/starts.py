"""Starts of Countersign in a process of its own, from an environment, as an operator's start
reads it, made quickly: each is forked from a server process (``multiprocessing``'s
forkserver, started once per test process with nothing of the test run in it) that has
imported the libraries Countersign uses, never Countersign itself or its settings. A start
then reads the settings and sets up the apps as a fresh ``python -c`` does, without paying
for the libraries' imports again: ``django.setup()`` takes seconds from nothing, one of
them the MCP SDK's types.
"""

from __future__ import annotations

import linecache
import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping
from pathlib import Path

# Imported once, in the server: the heaviest of what a start imports. Each imports without
# Django's settings (checked in every start: ``_start``).
LIBRARIES = (
    "celery.app",
    "detect_secrets.core.scan",
    "django.core.serializers.json",
    "django.db.models",
    "django.forms",
    "django.http",
    "django.urls",
    "httpx",
    "mcp.client",
    "mcp.server.mcpserver",
    "mcp.types",
    "openapi_spec_validator",
    "psycopg",
    "psycopg_pool",
    "pydantic",
    "redis.asyncio",
)

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(list(LIBRARIES))


def start(
    script: str, env: Mapping[str, str], *, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """What ``subprocess.run([python, "-c", script], env=env, cwd=cwd)`` gives, with its
    output captured: the exit code, stdout and stderr."""
    with tempfile.TemporaryDirectory() as kept:
        out, err = Path(kept) / "stdout", Path(kept) / "stderr"
        process = _context.Process(target=_start, args=(script, dict(env), str(cwd), out, err))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["-c", script], timeout)
        return subprocess.CompletedProcess(
            ["-c", script], process.exitcode or 0, out.read_text(), err.read_text()
        )


def _start(script: str, env: dict[str, str], cwd: str, out: Path, err: Path) -> None:
    """In the forked process: the environment, the working directory first on the path (as
    ``python -c``), the output to the files, then the script; an exception is its
    traceback on stderr and exit code 1, as Python's own."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, cwd)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
    code = 0
    try:
        if "config.settings" in sys.modules or ("django.conf" in sys.modules and _configured()):
            raise RuntimeError("the start server read the settings: a library in LIBRARIES did")
        exec(compile(script, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102  (the test's own script, as python -c runs it)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:
        # As Python prints it: from the script's frame down, its lines as the script's (the
        # server's own "<string>", its command line, would otherwise stand in for them).
        linecache.cache["<string>"] = (len(script), None, script.splitlines(True), "<string>")
        traceback.print_exception(
            type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None
        )
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _configured() -> bool:
    from django.conf import settings

    return settings.configured
