"""Text an upstream wrote (a tool's name it lists, the reason one is left out, the error
that stopped an import) as a command prints it: with each control character written out
(``<U+001B>``), as the reviewers' and auditors' pages write out hidden characters. Printed
as it was, an escape sequence drove the admin's terminal (set its clipboard, its title, or
wrote over a line), and a line break in a name printed lines the import never wrote."""

from __future__ import annotations

import re

from audit.display import escape_hidden

# C0 (a tab aside) and C1 control characters, DEL among them.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    return escape_hidden(_CONTROL.sub(lambda m: f"<U+{ord(m[0]):04X}>", text))
