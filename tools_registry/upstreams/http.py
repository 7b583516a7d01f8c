"""Calling an imported HTTP operation: one request, built from the operation's mapping.

Only the arguments' values come from the agent. The scheme, host and port come from the
upstream's base URL, set by an admin; path parameters are percent-encoded (a ``/`` in a
value stays inside its segment, and ``.``/``..`` are refused), never concatenated. The
call's idempotency key goes in the upstream's idempotency header. Redirects are not
followed. The answer is read up to ``UPSTREAM_MAX_RESPONSE_BYTES``; a bigger one is
stored truncated, and says so.

Outcomes, as the executor reads them: 2xx succeeded (its JSON, or its text); 3xx and 4xx
failed, the effect did not happen (``ToolFailed``: retryable for 408, 409, 425 and 429,
after the wait their Retry-After asks for);
5xx, a 303 See Other to a request other than GET or HEAD (carried out, its result
elsewhere), a timeout or a dropped connection leave the outcome unknown
(``UpstreamUnclear``).
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import re
import time
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from django.conf import settings

from audit.masking import cut_short
from core import bounded_http, tls
from core.hosts import host_and_port
from core.json_values import nests_within
from tools_registry.registry import LookupResult, ToolFailed
from tools_registry.upstreams import secrets
from tools_registry.upstreams.offers import JSON

RETRYABLE = frozenset({408, 409, 425, 429})
SEE_OTHER = 303
RETRY_AFTER_MAX_SECONDS = 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD"})  # a redirect of one is no effect carried out
USER_AGENT = "Countersign-Upstream/1"
# A JSON answer nested deeper is kept as its text: Python's parser goes deeper than Python's
# recursion, which storing, masking and auditing a result use (the MCP client's parser
# refuses deeper answers itself).
MAX_ANSWER_DEPTH = 200


class UpstreamUnclear(Exception):
    """The upstream answered in a way that does not tell whether the effect happened."""


# What an HTTP/1.1 header value may hold (RFC 9110 5.5, as h11 checks it before sending):
# visible ASCII, with spaces and tabs only between visible characters.
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")
# What a header's name may be (RFC 9110 5.1, a token, as h11 checks it before sending).
HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")


def header_key(name: str) -> str:
    """What a server reads a header's name as: in any case, and with "_" as "-" (CGI and
    WSGI name ``X-Tenant`` and ``X_Tenant`` alike, ``HTTP_X_TENANT``)."""
    return name.lower().replace("_", "-")


def request_parts(
    operation: JSON, base_url: str, arguments: JSON
) -> tuple[str, JSON, dict[str, str], Any]:
    """(url, query, headers, body) of the request that performs ``operation``."""
    path = operation["path"]
    if not path.startswith("/"):
        # Written after the base URL, a path that does not begin with "/" is read as more of
        # its host ("@collector.example/x"): the request, with the upstream's headers, would
        # go to another. None is imported (``openapi._paths``); one stored before is refused.
        raise ToolFailed(
            "The operation's path does not begin with '/'; import the upstream's tools again.",
            code="upstream_url_invalid",
            unsent=True,
        )
    query: JSON = {}
    headers: dict[str, str] = {}
    for parameter in operation["parameters"]:
        name, place = parameter["name"], parameter["in"]
        if name not in arguments:
            continue
        value = arguments[name]
        if place == "path":
            text = value if isinstance(value, str) else json.dumps(value)
            if text in ("", ".", ".."):
                raise ToolFailed(
                    f"{name} cannot be {text!r}.", code="invalid_arguments", unsent=True
                )
            path = path.replace("{" + name + "}", quote(text, safe=""))
        elif place == "query":
            query[name] = (
                value if isinstance(value, str | int | float | list) else json.dumps(value)
            )
        else:
            if not HEADER_NAME.fullmatch(name):
                # Imported before ``openapi`` left such an operation out: httpx refuses it as
                # the request is written, nothing sent, an error that left a write unknown.
                raise ToolFailed(
                    f"The operation's header parameter {name[:100]!r} is no header's name; "
                    "import the upstream's tools again.",
                    code="upstream_operation_invalid",
                    unsent=True,
                )
            text = value if isinstance(value, str) else json.dumps(value)
            if not _HEADER_VALUE.fullmatch(text):
                # httpx would refuse it as the request is written (nothing sent), an error
                # that would leave a write's outcome unknown and re-run it to no end.
                raise ToolFailed(
                    f"{name} cannot be sent as an HTTP header: printable ASCII only, on one line.",
                    code="invalid_arguments",
                    unsent=True,
                )
            headers[name] = text
    body = None
    mode = (operation.get("body") or {}).get("mode")
    if mode == "merged":
        body = {k: arguments[k] for k in operation["body"]["properties"] if k in arguments}
    elif mode == "property":
        body = arguments.get("body")
    return base_url.rstrip("/") + path, query, headers, body


def call(
    *,
    operation: JSON,
    base_url: str,
    upstream_headers: list[tuple[str, str]],
    idempotency_header: str,
    key: str,
    arguments: JSON,
    timeout: float,
) -> JSON:
    url, query, headers, body = request_parts(operation, base_url, arguments)
    ours = {**dict(upstream_headers), "User-Agent": USER_AGENT}
    if body is not None:
        ours["Content-Type"] = "application/json"
    if idempotency_header:
        ours[idempotency_header] = key
    # The upstream's own headers are Countersign's, never an argument's: an agent's header
    # argument of the same name (in any case, "_" for "-": ``header_key``) is dropped,
    # whenever the admin set it.
    taken = {header_key(name) for name in ours}
    sent = {**{k: v for k, v in headers.items() if header_key(k) not in taken}, **ours}
    status, answer, answered = _send(
        operation["method"], url, query, sent, body, timeout, upstream_headers
    )
    location = answered.get("location", "")
    if 200 <= status < 300:
        return secrets.answer_without_credentials(answer, upstream_headers)
    if 300 <= status < 400:
        try:
            # Its host, never a user and password before it: what the upstream wrote there
            # (its credential, quoted back) reaches the agent, as any of its messages.
            target = host_and_port(urlsplit(location)) or "elsewhere"
        except ValueError:  # "http://[::1": still a redirect, the request not carried out
            target = "elsewhere"
        target = secrets.without_credentials(target, upstream_headers)
        if status == SEE_OTHER and operation["method"] not in SAFE_METHODS:
            # RFC 9110 15.4.4: the request was carried out and its result is elsewhere (a
            # POST, then "see the order it made"); not followed, that result is not known.
            raise UpstreamUnclear(
                f"The upstream carried the request out and redirected to its result at "
                f"{target} (HTTP 303); redirects are not followed."
            )
        raise ToolFailed(
            f"The upstream redirected the request to {target}; redirects are not followed.",
            code="upstream_redirect",
        )
    # Cut where nothing the trail masks is cut through (a quoted address cut short is no
    # longer one to the detectors, and its start would be kept in clear).
    message = cut_short(secrets.without_credentials(_message(answer), upstream_headers), 300)
    if 400 <= status < 500:
        raise ToolFailed(
            f"The upstream refused the request (HTTP {status}): {message}",
            code=f"upstream_{status}",
            retryable=status in RETRYABLE,
            retry_after=retry_after(answered.get("retry-after")) if status in RETRYABLE else None,
        )
    raise UpstreamUnclear(f"The upstream failed (HTTP {status}): {message}")


def lookup(
    *,
    lookup: JSON,
    base_url: str,
    upstream_headers: list[tuple[str, str]],
    key: str,
    timeout: float,
) -> LookupResult:
    """Ask the upstream's lookup operation whether the effect of ``key`` happened."""
    name = lookup["parameter"]
    operation = {"path": lookup["path"], "parameters": [{"name": name, "in": lookup["in"]}]}
    url, query, headers, _ = request_parts(operation, base_url, {name: key})
    try:
        status, answer, _ = _send(
            lookup["method"],
            url,
            query,
            {**dict(upstream_headers), **headers},
            None,
            timeout,
            upstream_headers,
        )
    except UpstreamUnclear:
        return LookupResult.cannot_tell()
    if status == 200:
        # The call's result, as a 2xx of the call itself would have been.
        return LookupResult.found_with(secrets.answer_without_credentials(answer, upstream_headers))
    if status == 404:
        return LookupResult.not_found()
    return LookupResult.cannot_tell()


def _send(
    method: str,
    url: str,
    query: JSON,
    headers: dict[str, str],
    body: Any,
    timeout: float,
    credentials: secrets.Headers,
) -> tuple[int, JSON, httpx.Headers]:
    limit = settings.UPSTREAM_MAX_RESPONSE_BYTES
    # httpx's timeout bounds each read, not the request: a server sending a byte now and
    # then (of its headers or of its body) would hold the call (and a web thread, for a
    # read) without end. The deadline bounds the whole request.
    deadline = time.monotonic() + timeout
    # Only encodings the answer can be inflated from within the limit (an agent's header
    # argument or the upstream's headers asking for br would make the answer unreadable).
    headers = {k: v for k, v in headers.items() if header_key(k) != "accept-encoding"}
    headers["Accept-Encoding"] = bounded_http.ACCEPT_ENCODING
    answered: list[httpx.Response] = []  # its status line and headers, as they arrived
    try:
        client = bounded_http.client_within(
            deadline,
            timeout=timeout,
            follow_redirects=False,
            verify=tls.context(),
            event_hooks={"response": [answered.append]},
        )
    except bounded_http.ProxyUnusable as exc:
        raise ToolFailed(
            f"The upstream cannot be called: {exc}.", code="upstream_unreachable", unsent=True
        ) from None
    try:
        with (
            client,
            client.stream(
                method,
                url,
                params=query,
                headers=headers,
                content=json.dumps(body).encode() if body is not None else None,
            ) as response,
        ):
            raw, truncated = bounded_http.read(response, limit=limit, deadline=deadline)
            return (
                response.status_code,
                _answer(response, raw, truncated, credentials),
                response.headers,
            )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        # Refused as the request is built (the upstream's server URL holds a template, or a
        # scheme other than http and https): nothing was sent, so the call did not run.
        raise ToolFailed(
            f"The upstream's URL cannot be requested: {cut_short(str(exc), 200)}",
            code="upstream_url_invalid",
            unsent=True,
        ) from None
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        # No connection (refused, no route, the TLS handshake failed, or not made in time):
        # the request is written only once one is made, so nothing was sent. Failed, not
        # unknown: an upstream that is down does not leave every call to reconciliation.
        raise ToolFailed(
            f"The upstream could not be reached: {type(exc).__name__}.",
            code="upstream_unreachable",
            retryable=True,
            unsent=True,
        ) from None
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"The upstream did not answer within {timeout:g} s.") from exc
    except httpx.DecodingError as exc:
        # It answered, in an encoding that is corrupt or cannot be inflated within the
        # limit: nothing says whether the effect happened, as with an answer cut off.
        raise UpstreamUnclear(
            f"The upstream's answer could not be decoded: {type(exc).__name__}."
        ) from exc
    except httpx.RemoteProtocolError as exc:
        if answered and 300 <= answered[-1].status_code < 400:
            # httpx reads a redirect's Location even when it follows none, and refuses one
            # that is no URL: still a redirect, the request not carried out.
            redirect = answered[-1]
            return redirect.status_code, {}, redirect.headers
        raise UpstreamUnclear(
            f"The request to the upstream broke off: {type(exc).__name__}."
        ) from exc
    except httpx.HTTPError as exc:
        raise UpstreamUnclear(
            f"The request to the upstream broke off: {type(exc).__name__}."
        ) from exc


def _answer(
    response: httpx.Response, raw: bytes, truncated: bool, credentials: secrets.Headers
) -> JSON:
    text = bounded_http.text(raw, response.encoding)
    if truncated:
        text = secrets.without_cut_credential(text, credentials)
        return {"truncated": True, "limit_bytes": len(raw), "text": text}
    if _is_json(response.headers.get("content-type", "")):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            return {"text": text}
        answer = parsed if isinstance(parsed, dict) else {"result": parsed}
        return answer if nests_within(answer, MAX_ANSWER_DEPTH) else {"text": text}
    return {"text": text} if text else {}


def retry_after(value: str | None) -> int | None:
    """The whole seconds an upstream's Retry-After asks for (RFC 9110 10.2.3: seconds, or an
    HTTP date), at most a day; None when it says none, or nothing that can be read."""
    value = (value or "").strip()
    if value.isascii() and value.isdigit():
        return min(int(value), RETRY_AFTER_MAX_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
        when = when.replace(tzinfo=datetime.UTC)
    left = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    return min(max(math.ceil(left), 0), RETRY_AFTER_MAX_SECONDS)


def _is_json(content_type: str) -> bool:
    """Whether an answer's media type is JSON: ``application/json`` or a ``+json`` type (RFC
    6839: ``application/problem+json``, the errors of RFC 9457; ``application/hal+json``),
    in any case (RFC 9110 8.3.1). Only the first was read, its exact spelling: every other
    JSON answer reached the agent as a string, and an error's message as its JSON text."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _message(answer: JSON) -> str:
    error = answer.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    for key in ("message", "detail", "text"):
        if isinstance(answer.get(key), str):
            return str(answer[key])
    return json.dumps(answer)
