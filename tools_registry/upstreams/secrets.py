"""Upstream header values (an ``Authorization`` header, an API key), encrypted at rest.

Fernet (``cryptography``) with the keys in ``UPSTREAM_SECRETS_KEY`` (comma-separated: the
first encrypts, every one decrypts, so a key can be rotated), or by default a key derived
from ``SECRET_KEY`` (rotating that then means entering the headers again). Only header
names are ever shown, logged or audited; values are decrypted just before a request.
"""

from __future__ import annotations

import base64
import json
import re
import string
from functools import cache
from typing import Any
from urllib.parse import quote, quote_plus

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

Headers = list[tuple[str, str]]


class SecretsUnreadable(Exception):
    """The stored headers cannot be decrypted with the configured keys."""


def _derived_key(secret_key: str) -> str:
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"countersign-upstream-headers",
        info=b"fernet",
    ).derive(secret_key.encode())
    return base64.urlsafe_b64encode(derived).decode()


@cache
def _cipher(keys: str, secret_key: str, *, derived_too: bool = False) -> MultiFernet:
    configured = [k.strip() for k in keys.split(",") if k.strip()]
    if not configured or derived_too:
        configured.append(_derived_key(secret_key))
    return MultiFernet([Fernet(key.encode()) for key in configured])


def cipher() -> MultiFernet:
    return _cipher(settings.UPSTREAM_SECRETS_KEY, settings.SECRET_KEY)


def check_keys() -> None:
    """At start (``ToolsRegistryConfig.ready``): the keys are read when headers are, and one
    that is no Fernet key failed every request to an upstream with headers, and every save
    of them."""
    try:
        cipher()
    except ValueError as problem:  # the message never quotes the key
        raise ImproperlyConfigured(f"UPSTREAM_SECRETS_KEY: {problem}") from None


def encrypt(headers: Headers) -> str:
    return cipher().encrypt(json.dumps(headers).encode()).decode() if headers else ""


def decrypt(token: str) -> Headers:
    if not token:
        return []
    try:
        return [
            (str(name), str(value)) for name, value in json.loads(cipher().decrypt(token.encode()))
        ]
    except InvalidToken:
        raise SecretsUnreadable(
            "The upstream's headers cannot be decrypted: UPSTREAM_SECRETS_KEY (or SECRET_KEY) "
            "changed since they were set. Enter them again."
        ) from None


def reencrypt(token: str) -> str:
    """``token`` encrypted again with the first key (``rotate_upstream_keys``), so that the
    keys after it can be retired. Read with any key, or with the one derived from
    ``SECRET_KEY``: what was stored before ``UPSTREAM_SECRETS_KEY`` was set is under it,
    and no one can list it beside a new key. ``SecretsUnreadable`` when none reads it."""
    if not token:
        return ""
    rotating = _cipher(settings.UPSTREAM_SECRETS_KEY, settings.SECRET_KEY, derived_too=True)
    try:
        return rotating.rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretsUnreadable(
            "The upstream's headers cannot be decrypted with any key of UPSTREAM_SECRETS_KEY "
            "nor the one derived from SECRET_KEY. Enter them again."
        ) from None


# A header's name as admins write one (RFC 9110 allows a few more symbols): ASCII letters,
# digits, "-" and "_". str.isalnum() also took "é" and "²", which no HTTP client can send.
_NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_")


_FRAMING = (
    "the HTTP client frames each request's body itself; another length or encoding breaks "
    "every request, or is read on the way as a second request (request smuggling)"
)
_HOP_BY_HOP = (
    "it is about one connection, not the request (a hop-by-hop header: a proxy drops it, "
    "and the headers it names), and the HTTP client manages its connections itself"
)
_MCP_SESSION = "the MCP client sets it for the session it opens with the server"
# Headers an upstream's own may not set: what the HTTP client sets for each request (where
# it goes, how its body is framed), what concerns one connection only (RFC 9110 7.6.1),
# and what Countersign or the MCP client sets for each request or session (``http.call``,
# ``mcp._connect``). One set here broke every request of the upstream, or smuggled one.
RESERVED_HEADERS = {
    "host": "each request goes to the host of the upstream's URL, which the HTTP client "
    "names in Host; another sends it to another site on that server, or to none",
    "content-length": _FRAMING,
    "transfer-encoding": _FRAMING,
    "te": _HOP_BY_HOP,
    "trailer": _FRAMING,
    "connection": _HOP_BY_HOP,
    "keep-alive": _HOP_BY_HOP,
    "proxy-connection": _HOP_BY_HOP,
    "upgrade": _HOP_BY_HOP,
    "expect": "the HTTP client sends each body at once and waits for no 100 Continue; a "
    "server that cannot meet the expectation refuses every request (417)",
    "accept-encoding": "Countersign asks for the encodings it can read within its size "
    "limits (gzip, deflate); an answer in another cannot be read",
    "mcp-session-id": _MCP_SESSION,
    "mcp-protocol-version": _MCP_SESSION,
    "last-event-id": _MCP_SESSION,
}


def reserved_header(name: str) -> str:
    """Why ``name`` cannot be one of an upstream's headers (nor its idempotency header), or
    "". In any case, and with "_" read as "-": CGI and WSGI name ``Transfer-Encoding`` and
    ``Transfer_Encoding`` alike (``HTTP_TRANSFER_ENCODING``), so behind such a server one
    passes for the other."""
    reason = RESERVED_HEADERS.get(name.strip().lower().replace("_", "-"), "")
    return f"{name} cannot be set for an upstream: {reason}." if reason else ""


def valid_idempotency_header(name: str) -> None:
    """The validator of an upstream's idempotency header (empty: none is sent): a name its
    own headers could have. One no HTTP client can send ("Idempotency Key", "Clé"), or that
    the client sets itself (Host, Content-Length), failed every call of the upstream."""
    if name and not all(c in _NAME_CHARACTERS for c in name):
        raise ValidationError("A header's name: ASCII letters, digits, '-' and '_' only.")
    if problem := reserved_header(name):
        raise ValidationError(problem)


def parse_header_lines(lines: list[str]) -> Headers:
    """``Name: value`` lines, as an admin types them; ValueError says what is wrong."""
    headers: Headers = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name or not all(c in _NAME_CHARACTERS for c in name):
            # Not quoted: a line without its name ("Bearer sk_live_...") is the credential.
            raise ValueError(f"Write each header as 'Name: value' (line {number} is not).")
        if problem := reserved_header(name):
            raise ValueError(problem)  # the name only: the value may be a credential
        if any(ch in value for ch in "\r\n\x00"):
            raise ValueError(f"The value of {name} may not span lines.")
        if not all(ch == "\t" or " " <= ch <= "~" for ch in value):
            # HTTP clients send a header as ASCII: one they cannot encode failed the import
            # (a 500 in the admin) and every call. Not quoted: the value is the credential.
            raise ValueError(
                f"The value of {name} may hold only printable ASCII characters "
                "(letters, digits, punctuation, spaces)."
            )
        headers.append((name, value))
    return headers


def without_credentials(message: str, upstream_headers: Headers) -> str:
    """An upstream's message with the values of the headers it was sent (its credentials)
    taken out, whole or as their tokens ("Bearer <token>"), as sent or encoded as an upstream
    quotes them (``_credentials``): some servers quote them back, and the message reaches the
    agent, the call and the trail. Take them out before cutting a message short: a cut
    through a credential leaves its start."""
    return _without(message, _credentials(upstream_headers))


def _without(text: str, credentials: list[str]) -> str:
    # A scan of the text per form, longest first: linear in the text, however large.
    for secret in credentials:
        if secret in text:
            text = text.replace(secret, "[credential]")
    return text


def answer_without_credentials(answer: dict[str, Any], upstream_headers: Headers) -> dict[str, Any]:
    """An upstream's answer (a 2xx, an MCP result, a lookup's finding) with its credentials
    taken out of every string in it, names too (``without_credentials``): an echo endpoint
    or a debug field quotes them back, and the answer is the call's result, the agent's to
    read. Walked without recursion: an answer nests as deep as its parser allowed."""
    if not upstream_headers:
        return answer
    credentials = _credentials(upstream_headers)  # once, not once per string
    pending: list[tuple[Any, Any]] = []

    def copied(value: Any) -> Any:
        if isinstance(value, dict | list):
            empty: Any = {} if isinstance(value, dict) else []
            pending.append((value, empty))
            return empty
        return _without(value, credentials) if isinstance(value, str) else value

    cleaned: dict[str, Any] = copied(answer)
    while pending:
        source, target = pending.pop()
        if isinstance(source, dict):
            for name, value in source.items():
                target[copied(name)] = copied(value)
        else:
            target.extend(copied(value) for value in source)
    return cleaned


def without_cut_credential(text: str, upstream_headers: Headers) -> str:
    """The text of an answer cut short, without the start of a credential the cut went
    through, in any of its forms (the rest of it is ``without_credentials``'s): an agent
    that can move the echo against the cut would read a credential's every start. The text
    is cut anyway."""
    for secret in _credentials(upstream_headers):
        for length in range(len(secret) - 1, 0, -1):
            if text.endswith(secret[:length]):
                text = text[:-length]
                break
    return text


def _credentials(upstream_headers: Headers) -> list[str]:
    """The header values, whole and as their tokens ("Bearer <token>"), and what a ``Basic``
    token decodes to (``user:password``, the user, the password), each as sent and in the
    forms an upstream quotes it in (``_quoted``), longest first."""
    parts: set[str] = set()
    for _, value in upstream_headers:
        words = value.split()
        parts.update((value, *words))
        if len(words) == 2 and words[0].lower() == "basic":
            parts.update(_basic_pair(words[1]))
    return sorted(
        {form for part in parts if len(part) >= CREDENTIAL_SHORTEST for form in _quoted(part)},
        key=len,
        reverse=True,
    )


def _basic_pair(token: str) -> tuple[str, ...]:
    """What an upstream reads from ``Authorization: Basic <token>`` and may quote back."""
    try:
        pair = base64.b64decode(token, validate=True).decode()
    except ValueError:  # not base64 (binascii.Error), or not text (UnicodeDecodeError)
        return ()
    user, colon, password = pair.partition(":")
    return (pair, user, password) if colon else (pair,)


def _quoted(part: str) -> set[str]:
    """``part`` as sent, and as the encoders that put what a request carried into an answer
    write it: escaped in a JSON string (once, or twice for JSON held in a JSON string;
    with "/" escaped as PHP does, "<", ">", "&" as Go does), and percent-encoded as a query
    string's or a URL's part is (by RFC 3986, with "+" for a space, by encodeURIComponent,
    form-encoded by browsers, Java and PHP; in upper- and lower-case hex). A handful of
    forms for a few characters; most tokens have a single one."""
    forms = {part}
    for slash, html in ((False, False), (True, False), (False, True)):
        once = _json_escaped(part, slash=slash, html=html)
        forms.update((once, _json_escaped(once, slash=slash, html=html)))
    for safe, plus in _URL_ENCODERS:
        encoded = (quote_plus if plus else quote)(part, safe=safe)
        forms.update((encoded, _LOWER_HEX.sub(lambda hex_: hex_[0].lower(), encoded)))
    return forms


def _json_escaped(text: str, *, slash: bool, html: bool) -> str:
    escaped = json.dumps(text)[1:-1]
    if slash:
        escaped = escaped.replace("/", "\\/")
    if html:
        escaped = escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return escaped


# The characters each encoder leaves as they are, and whether it writes a space as "+".
_URL_ENCODERS = (
    ("-_.~", False),  # RFC 3986: Python's quote(safe=""), PHP's rawurlencode
    ("-_.~", True),  # Python's quote_plus, Go's QueryEscape
    ("-_.~/", False),  # Python's quote, a path
    ("-_.!~*'()", False),  # JavaScript's encodeURIComponent
    ("-_.*", True),  # form-encoded: browsers' URLSearchParams, Java's URLEncoder
    ("-_.", True),  # PHP's urlencode
)
_LOWER_HEX = re.compile("%[0-9A-F]{2}")

# Shorter parts of a header value ("Bearer", a tenant's "eu") are not credentials to hide.
CREDENTIAL_SHORTEST = 8
