"""How masked values are shown to reviewers: enough to recognise, never enough to use.

``partial`` is a renderer for ``audit.masking`` (``mask_text(text, render=partial)``,
``mask_value(...)``, ``mask_arguments(...)``):

| kind | shown as | e.g. |
|---|---|---|
| ``email`` | first character of the local part, ``***``, then the domain | ``a***@example.com`` |
| ``phone`` | three bullets and the last two digits | ``•••58`` |
| ``card`` | four bullets, a space and the last four digits | ``•••• 1111`` |
| ``secret``, ``field``, any other | the keyed-hash marker | ``[masked:secret:3f9a1c2b]`` |

None of these forms is taken for an e-mail address, a card or a phone number when masked
again: ``***`` stands where an address needs a letter before its "@", and two or four digits
are no card or phone number.
"""

from __future__ import annotations

from audit.masking import Kind, masked

__all__ = ["partial"]


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
