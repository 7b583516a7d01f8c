"""How stored text is shown to people: masked values enough to recognise, never enough to
use; hidden characters written out.

``partial`` is a renderer for ``audit.masking`` (``mask_text(text, render=partial)``,
``mask_value(...)``, ``mask_arguments(...)``):

| kind | shown as | e.g. |
|---|---|---|
| ``email`` | first character of the local part, ``***``, then the domain | ``a***@example.com`` |
| ``phone`` | three bullets and the last two digits | ``•••58`` |
| ``card`` | four bullets, a space and the last four digits | ``•••• 1111`` |
| ``iban``, ``secret``, ``field``, any other | the keyed-hash marker | ``[masked:secret:3f9a1c2b]`` |

None of these forms is taken for an e-mail address, a card or a phone number when masked
again: ``***`` stands where an address needs a letter before its "@", and two or four digits
are no card or phone number.

``escape_hidden`` writes out the characters a reader cannot see or that reorder what they
see (``<U+202E>``). Every page that shows what agents, end users, reviewers or upstreams
wrote uses it, the reviewers' (``approvals.display``) and the auditors' (the ``visible``
filter of ``audit_tags``) alike; the trail and its exports keep the text as written.
"""

from __future__ import annotations

import re

from audit.masking import Kind, masked

__all__ = ["HIDDEN", "escape_hidden", "partial"]

# Characters a reader cannot see, or that reorder what they see (Trojan Source,
# CVE-2021-42574): zero-width characters, word joiners, the byte order mark, Unicode tag
# characters (ASCII smuggling) and the bidirectional embeddings, overrides and isolates.
# Also the Arabic letter mark (a direction mark, as U+200E and U+200F are), the combining
# grapheme joiner and the Hangul fillers, which show as nothing or as a blank.
HIDDEN = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u2028\u2029\u202a-\u202e"
    "\u2060-\u2064\u2066-\u2069\u3164\ufeff\uffa0\U000e0000-\U000e007f]"
)


def partial(kind: str, value: str) -> str:
    """The reviewer's display form of a masked value (see the table above)."""
    if kind == Kind.EMAIL:
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if kind == Kind.PHONE:
        return f"•••{value[-2:]}"
    if kind == Kind.CARD:
        return f"•••• {value[-4:]}"
    return masked(kind, value)


def escape_hidden(text: str) -> str:
    """``text`` with every hidden or direction-changing character written out (``<U+202E>``),
    so that what a person reads is what a machine will read."""
    return HIDDEN.sub(lambda m: f"<U+{ord(m.group(0)):04X}>", text)
