from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit import chain
from audit.verify import record_verification, verify_chain


class Command(BaseCommand):
    help = (
        "Seal pending audit events, then walk the hash chain (and the external anchor) and "
        "name the first broken link. Exits non-zero when the chain is broken."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--anchor", type=Path, help="Anchor file to compare against (default: the setting)."
        )
        parser.add_argument(
            "--no-seal", action="store_true", help="Verify only; do not seal pending events first."
        )
        parser.add_argument(
            "--require-anchor",
            action="store_true",
            help="Fail when no anchor covers the chain (a whole-chain rewrite would pass).",
        )
        parser.add_argument(
            "--record", action="store_true", help="Record the outcome as an audit event."
        )
        parser.add_argument("--json", action="store_true", help="Print the outcome as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["no_seal"]:
            chain.seal_pending()
        try:
            if options["anchor"] is not None:
                # Named here, a missing file is a mistake (a typo, a copy not mounted), not a
                # trail without anchors yet: walked without it, a cut tail would pass.
                options["anchor"].stat()
            result = verify_chain(anchor_path=options["anchor"])
        except OSError as problem:  # a directory, a file this user may not read
            raise CommandError(
                f"cannot read the anchor file {problem.filename}: {problem.strerror}"
            ) from None
        if options["record"]:
            record_verification(result)
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
        for warning in result.warnings:
            self.stderr.write(f"warning: {warning}")
        if result.interrupted:
            raise CommandError(f"audit chain not verified: {result.reason}")
        if not result.ok:
            # No seq: the reason names what broke (the anchor file, events outside the chain).
            where = f" at seq {result.broken_seq}" if result.broken_seq else ""
            if result.broken_id:
                where += f" (event id {result.broken_id})"
            raise CommandError(
                f"audit chain broken{where}: {result.reason}; "
                f"{result.checked} events verified before it"
            )
        if options["require_anchor"] and result.checked and result.last_anchor is None:
            raise CommandError("audit chain not anchored: no anchor covers any sealed event")
        if not options["json"]:
            anchored = (
                f"last anchor seq {result.last_anchor['seq']} at {result.last_anchor['at']}"
                if result.last_anchor
                else "no anchor"
            )
            self.stdout.write(
                f"audit chain ok: {result.checked} events, head seq {result.head_seq} "
                f"hash {result.head_hash}; {result.anchors_checked} anchors matched, {anchored}; "
                f"{result.unsealed} not yet sealed"
            )
