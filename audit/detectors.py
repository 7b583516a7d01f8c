"""The detectors behind ``audit.masking``: each finds one kind of secret or personal datum in
free text and says where it is and what it is, never how it is shown (that is the renderer's
business, in ``audit.masking``).

Key shapes come from Yelp's ``detect-secrets`` plugins and phone numbers from
``phonenumbers`` (Google's libphonenumber); the regular expressions kept here cover what those
libraries miss, each saying why.

Every detector has ``may_find(text, folded)``, a cheap test (``folded`` is the text
case-folded) that holds for any text in which the detector could find something, and for any
text containing such a text. ``audit.masking`` asks it first, so text that no detector could
find anything in (most audited text: ids, names, statuses, hashes) costs a few substring
tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from enum import StrEnum
from itertools import product

import phonenumbers
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector
from phonenumbers import Leniency, PhoneNumberMatcher, phonenumbermatcher
from stdnum import iban as stdnum_iban


class Kind(StrEnum):
    """What a masked value was; a renderer decides from it how the value is shown."""

    EMAIL = "email"
    PHONE = "phone"
    CARD = "card"
    IBAN = "iban"
    SECRET = "secret"  # noqa: S105 (a kind's name, not a password)
    FIELD = "field"  # a field the tool marks sensitive, masked whole whatever it holds


@dataclass(frozen=True, slots=True)
class Finding:
    """``text[start:end]`` is to be masked; ``value`` is what its fingerprint is taken of (the
    digits of a card or phone number, an e-mail address in lower case, the secret itself)."""

    start: int
    end: int
    kind: Kind
    value: str


# A payload's matcher runs: 900 numbers among order numbers and dates in 40,000 characters
# take 1,600; a crafted soup of digit groups (020 7946 0958 030 1234567 ...) took one for
# every 8 characters or so, up to a millisecond each: 29 s to 115 s of CPU for a request body.
MATCHER_RUNS = 2_000
# A text's second reads of phone candidates, for a long soup of digit groups.
SECOND_READS = 64


@dataclass(slots=True)
class Budget:
    """What one masking may spend, enough for any real text and a bound on crafted text.

    ``matcher_runs`` (libphonenumber's matcher, the costly part of masking) is spent by all
    the strings of one payload together, so that a payload of many small strings gets no more
    than one long string. When it is spent, a phone candidate that could hold a number is
    masked whole, unread: digits over-masked, never a number left (fail closed).
    ``second_reads`` start again with each text (see _find_phones). ``decodings``: URL
    decodings one inside another, for text encoded over and over (%252525...)."""

    matcher_runs: int = MATCHER_RUNS
    second_reads: int = SECOND_READS
    decodings: int = 4


@dataclass(frozen=True)
class Detector:
    name: str
    may_find: Callable[[str, str], bool]
    find: Callable[[str, Budget], list[Finding]]


def _without_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    """The earliest finding wins; of two starting together, the longer."""
    kept: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if not kept or finding.start >= kept[-1].end:
            kept.append(finding)
    return kept


# --- Secrets -------------------------------------------------------------------------------

# A private key block, whole. detect-secrets' PrivateKeyDetector reports only the BEGIN line,
# and the key material is the lines after it. PGP armours its keys as "PRIVATE KEY BLOCK".
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)

# Names whose value is secret, as a map key (the whole name) or in an assignment in free text
# (``password: x``, ``"api_key": "x"``, ``DB_PASSWORD=x``). A prefix of words joined by ``_``,
# ``-`` or ``.`` may stand before the name (``db_password``, ``x-api-key``,
# ``AWS_SECRET_ACCESS_KEY``), and words in camelCase or PascalCase (``accessToken``,
# ``ClientSecret``; a word of two characters at least: ``OAuth`` is no name), nothing after
# it: ``token_cost`` and ``input_tokens`` are not secrets. detect-secrets' KeywordDetector is
# not used for this: it reports only the first value per pattern on a line, knows no
# ``token`` or ``authorization``, and its configuration file form takes the rest of the line
# as the value.
SECRET_NAME = (
    r"(?:[a-z0-9]+[_.-])*"  # noqa: S105 (names of secrets, not a secret)
    # The words before a capital (never across a separator, so the split is read once).
    r"(?-i:[A-Za-z0-9]*[a-z0-9](?<=[A-Za-z0-9][a-z0-9])(?=[A-Z]))?"
    # "pass" alone as a name is a password's (SMTP settings' {"user": ..., "pass": ...}).
    r"(?:pass(?:word|wd|phrase|code)?|pwd|secret|token|apikey"
    r"|(?:api|access|auth|secret|private|session|signing|encryption|client|master|subscription)[_-]?key"
    r"|authorization|auth|cookie|credentials?|card[_-]?number|cvc|cvv"
    # A signed URL's signature is its credential: whoever holds the URL reads or writes the
    # object until it expires (S3's ``X-Amz-Signature=``, GCS's ``X-Goog-Signature=``; Azure's
    # ``sig=`` is a key shape, below). Hex, which no key shape tells from a hash. Not
    # "signature" or "sig" alone: an e-mail tool's signature is text a reviewer has to read.
    r"|(?:amz|goog)[_-]signature)"
)

# An assignment: the name, its closing quote if it is quoted (``"api_key"``, or ``\"api_key\"``
# in JSON quoted inside a JSON string), then ``=``, ``:``, ``:=`` or ``=>``, then the value:
# a quoted value up to its closing quote, spaces and all (or to the end of the line when the
# quote is never closed, as in a truncated log line), backquotes included (Markdown's code,
# in which agents write their reasoning: ``password: `hunter2```); an unquoted one up to
# white space, a quote, ``&`` (URL queries), ``;`` (connection strings, cookies) or
# ``<``/``>``, less the punctuation that ends a sentence or closes a bracket around it. The
# literals null, true, false and none are not secrets. A value that is an auth scheme
# (``Authorization: Bearer x``) is left to the bearer detector, which keeps the scheme
# readable.
_ASSIGNMENT = re.compile(
    # A name starts where its words do, never at a word after a separator: the words before
    # it are read as its prefix from their start. Read from every word, a long run of
    # words ("a_a_..._tokens=x") was read once per word, seconds for 30,000 characters.
    rf"(?<![a-z0-9])(?<![a-z0-9][_.-]){SECRET_NAME}"
    r"(?:\\?[\"'`])?[ \t]*(?:=>|:=|={1,3}|:)[ \t]*"
    r"(?!(?:bearer|basic|token)\s)"
    r"(?:"
    r"\"(?P<dq>(?:\\.|[^\"\\\n])*)(?:\"|$)"
    r"|'(?P<sq>(?:\\.|[^'\\\n])*)(?:'|$)"
    r"|\\\"(?P<eq>(?:(?!\\\").)*)(?:\\\"|$)"
    r"|`(?P<bq>[^`\n]*)(?:`|$)"
    r"|(?P<bare>(?!(?:null|true|false|none)(?=[.,)\]}]*(?:[\s\"'`&;<>]|$)))[^\s\"'`&;<>]+?)"
    r"(?=[.,)\]}]*(?:[\s\"'`&;<>]|$))"
    r")",
    re.IGNORECASE | re.MULTILINE,
)

# A Cookie or Set-Cookie header: its value is every cookie in it (``theme=dark; sessionid=x``)
# up to the end of the line or the quote around the header (``curl -H "Cookie: ..."``), less
# the punctuation that ends a sentence, where an assignment's unquoted value ends at the
# first ``;``. It starts with a cookie (``name=``): words after the name ("Cookie: none set
# before consent") are a sentence, not a header, and the rest of the line stays readable. A
# name is a token (RFC 6265: no ``:``), so a name read from each "cookie:" ends at the next.
_COOKIE_HEADER = re.compile(
    r"(?<![a-z0-9])(?:set-)?cookie[ \t]*:[ \t]*"
    r"(?P<value>[\w!#$%&*+.^|~-]+=[^\r\n\"'`]*[^\s\"'`.,;)\]}])",
    re.IGNORECASE,
)

# An Authorization header's value is its scheme and credentials (``ApiKey x``, ``SSWS x``,
# ``Bot x``, ``Key x``): an assignment's unquoted value ends at the white space after the
# scheme, which was masked and the credentials left in clear. Bearer, Basic and Token are the
# auth-scheme detector's (it keeps the scheme readable); any other scheme is masked with its
# credentials (8 characters at least: words after the name are a sentence), one value, as a
# header's value is in a map ({"Authorization": "ApiKey x"}: the same fingerprint).
_AUTH_HEADER = re.compile(
    r"(?<![a-z0-9])authorization(?:\\?[\"'`])?[ \t]*(?:=>|:=|={1,3}|:)[ \t]*"
    r"(?!(?:bearer|basic|token)\s)"
    r"(?P<value>[a-z][\w.-]*[ \t]+[^\s\"'`&;<>]{8,}?)(?=[.,)\]}]*(?:[\s\"'`&;<>]|$))",
    re.IGNORECASE,
)

# A name-value pair written out, the two alone in their brackets: a list of headers in a log
# line ("('X-Api-Key', 'k')"), or in JSON quoted in text ('[["Authorization", "ApiKey k"]]').
# The value, quoted as the name is, up to its closing quote (no quote in it: read once).
_PAIR = re.compile(
    rf"[\[(][ \t]*(?P<q>\\?[\"']){SECRET_NAME}(?P=q)[ \t]*,[ \t]*"
    r"(?P=q)(?P<value>[^\"'\\\n]+)(?P=q)[ \t]*[\])]",
    re.IGNORECASE,
)

# Django's session and CSRF cookies outside a Cookie header (a request's cookies written out,
# curl's --cookie): ``sessionid=x``, ``'csrftoken': 'x'``. Their names end in no secret word
# SECRET_NAME knows as one (``csrf`` glued before ``token``), and "sessionid" is no word of
# it: as a name, read case-insensitively, it would take MCP's ``sessionId``, an id. So the
# cookies' own names, as Django writes them, lower-case.
_DJANGO_COOKIE = re.compile(
    r"(?<![\w.-])(?:sessionid|csrftoken)['\"]?[ \t]*[=:][ \t]*['\"]?(?P<value>[^\s;,'\"&<>]+)"
)

# detect-secrets' plugins for key shapes, used through their API (analyze_string yields the
# secret values they find in a line). Left out: the keyword, entropy and public-IP plugins
# (names are handled above; entropy takes hashes and ids for secrets; IPs are not secret), the
# private-key plugin (see above), and the plugins that only fire beside a vendor's name
# (IBM, SoftLayer, Cloudant, Artifactory), which the assignments above cover.
#
# Three of the plugins' patterns may start at every occurrence of their prefix and read on to
# the end of the run it stands in: "sk-" * 10,000 (OpenAI), "//" * 15,000 (npm), "eyJ" *
# 20,000 (JWT) took seconds, four times as long for twice the text. The classes below find
# what those plugins find, and run each pattern only where it matches: read once.
_OPENAI_RUN = re.compile(r"[A-Za-z0-9_-]+")
_OPENAI_MARKER = re.compile(r"(?=[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})")


class _OpenAIKeys(OpenAIDetector):
    """``sk-`` ... ``T3BlbkFJ`` ...: a key lies in one run of its characters, from the run's
    first ``sk-`` that its last marker follows, to that marker's end."""

    # What _ANY_KEY looks for instead of the pattern: what every key holds.
    screen = (re.compile("T3BlbkFJ"),)

    def analyze_string(self, string: str) -> Generator[str]:
        (pattern,) = self.denylist
        for run in _OPENAI_RUN.finditer(string):
            if "T3BlbkFJ" not in run.group(0):
                continue
            markers = [m.start() for m in _OPENAI_MARKER.finditer(string, run.start(), run.end())]
            if not markers:
                continue
            first = string.find("sk-", run.start(), markers[-1])  # one before the last marker
            if first >= 0 and (match := pattern.match(string, first, run.end())):
                yield match.group(0)


class _NpmTokens(NpmDetector):
    """An .npmrc line's token, found at the ``/:_authToken=`` it cannot do without, not read
    from every ``//`` before it (a line without that ``//`` is masked too)."""

    denylist = [re.compile(r"/:_authToken=\s*((npm_.+)|([A-Fa-f0-9-]{36})).*")]


_JWT_SEGMENT = re.compile(r"[A-Za-z0-9_=-]+")
_JWT_CHARACTER = re.compile(r"[A-Za-z0-9_=-]")


class _JwtTokens(JwtTokenDetector):
    """The plugin's pattern (and its check that header and payload decode), started only at
    an ``eyJ`` whose segment a "." and another segment follow: it matches there, and
    nowhere else."""

    screen = (re.compile("eyJ"),)

    def analyze_string(self, string: str) -> Generator[str]:
        (pattern,) = self.denylist
        done = 0
        for segment in _JWT_SEGMENT.finditer(string):
            end = segment.end()
            if string[end : end + 1] != "." or not _JWT_CHARACTER.match(string, end + 1):
                continue
            first = string.find("eyJ", max(segment.start(), done), end - 1)  # one more after it
            if first >= 0 and (match := pattern.match(string, first)):
                done = match.end()
                if self.is_formally_valid(match.group(0)):
                    yield match.group(0)


_LIBRARY_PLUGINS: tuple[RegexBasedDetector, ...] = (
    AWSKeyDetector(),
    AzureStorageKeyDetector(),
    BasicAuthDetector(),
    DiscordBotTokenDetector(),
    GitHubTokenDetector(),
    GitLabTokenDetector(),
    _JwtTokens(),
    MailchimpDetector(),
    _NpmTokens(),
    _OpenAIKeys(),
    PypiTokenDetector(),
    SendGridDetector(),
    SlackDetector(),
    SquareOAuthDetector(),
    StripeDetector(),
    TelegramBotTokenDetector(),
    TwilioKeyDetector(),
)

# Key shapes the plugins miss.
_KEY_SHAPES = re.compile(
    # An Azure SAS URL's signature (``?...&sig=``, URL-encoded base64, which may begin with an
    # escape): whoever holds the URL reads or writes the object until it expires. Only in a
    # URL's query: a ``sig`` field elsewhere is an e-mail's signature, text to be read.
    r"(?<=[?&]sig=)[A-Za-z0-9%+/_-]{16,}={0,2}|"
    r"\b(?:"
    # Stripe: the plugin knows only live secret and restricted keys, and only their first 24
    # characters; test and publishable keys, and longer keys, are masked whole here.
    r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}"
    # Anthropic keys and OpenAI project keys: the plugin needs OpenAI's legacy T3BlbkFJ marker.
    r"|sk-[A-Za-z0-9_-]{16,}"
    # GitHub fine-grained tokens, and classic ones of other lengths than the plugin's 36.
    r"|github_pat_[A-Za-z0-9_]{22,}|gh[pousr]_[A-Za-z0-9]{20,}"
    # Countersign's own agent tokens.
    r"|cst_[A-Za-z0-9]{6,}_[A-Za-z0-9_-]{16,}"
    # Webhook signing secrets, Standard Webhooks' "whsec_" + base64 (rotate_webhook_secret).
    r"|whsec_[A-Za-z0-9+/]{16,}={0,2}"
    # Google API keys (Maps, Gemini, Firebase...), sent in a URL's query: ``?key=AIza...``,
    # a parameter name no assignment takes for a secret's.
    r"|AIza[0-9A-Za-z_-]{35,}"
    # Google OAuth: access tokens, refresh tokens and clients' secrets, each as Google
    # prints it; the plugins know none of them.
    r"|ya29\.[A-Za-z0-9_-]{20,}|1//0[A-Za-z0-9_-]{30,}|GOCSPX-[A-Za-z0-9_-]{20,}"
    # Microsoft Entra (Azure AD) client secrets: three characters, a digit, "Q~", the rest.
    r"|[A-Za-z0-9_.~-]{3}\dQ~[A-Za-z0-9_.~-]{31,34}"
    # Hugging Face access tokens; Slack app-level tokens (its plugin knows the xox forms).
    r"|hf_[A-Za-z0-9]{30,}|xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]{32,}"
    # A Discord webhook's id and token, the URL's path: whoever has it posts as the webhook.
    # (The Discord plugin knows bot tokens only; Slack's webhook URLs its own plugin masks.)
    r"|(?<=/webhooks/)\d{17,20}/[A-Za-z0-9_-]{60,}"
    r")"
)
# A password in a URL without a user name (redis://:hunter2@host), which the basic-auth plugin
# wants: the password alone.
_URL_PASSWORD = re.compile(r"://:([^:/?#\[\]@!$&'()*+,;=\s]+)@")
# A plugin's pattern may stop inside a token (the Stripe plugin after 24 characters, the JWT
# plugin before the signature): a finding runs on to the end of the token.
_TOKEN_TAIL = re.compile(r"[\w+/=-]*(?:\.[\w+/=-]+)*")

# Credentials after an auth scheme, as in an Authorization header.
_BEARER = re.compile(r"(?i)\b(bearer|token|basic)(\s+)[A-Za-z0-9._~+/=-]{12,}")


def _find_private_keys(text: str) -> list[Finding]:
    return [
        Finding(m.start(), m.end(), Kind.SECRET, m.group(0)) for m in _PRIVATE_KEY.finditer(text)
    ]


def _find_assignments(text: str) -> list[Finding]:
    findings = []
    for match in _ASSIGNMENT.finditer(text):
        group = next(g for g in ("dq", "sq", "eq", "bq", "bare") if match.group(g) is not None)
        value = match.group(group)
        if value:
            findings.append(Finding(match.start(group), match.end(group), Kind.SECRET, value))
    for match in _COOKIE_HEADER.finditer(text):
        value = match.group("value")
        findings.append(Finding(match.start("value"), match.end("value"), Kind.SECRET, value))
    for match in _PAIR.finditer(text):
        value = match.group("value")
        findings.append(Finding(match.start("value"), match.end("value"), Kind.SECRET, value))
    for match in _AUTH_HEADER.finditer(text):
        value = match.group("value")
        findings.append(Finding(match.start("value"), match.end("value"), Kind.SECRET, value))
    for match in _DJANGO_COOKIE.finditer(text):
        value = match.group("value")
        findings.append(Finding(match.start("value"), match.end("value"), Kind.SECRET, value))
    return _without_overlaps(findings)


def _union(patterns: Iterable[re.Pattern[str]]) -> re.Pattern[str]:
    """One pattern matching where any of ``patterns`` does (each keeps its own flags)."""
    flag_letters = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.VERBOSE, "x"))
    parts = []
    for pattern in patterns:
        letters = "".join(letter for flag, letter in flag_letters if pattern.flags & flag)
        parts.append(f"(?{letters}:{pattern.pattern})" if letters else f"(?:{pattern.pattern})")
    return re.compile("|".join(parts))


# One search tells whether any key shape is there at all: hashes and UUIDs, common in audit
# data, are long runs that each of the many patterns would otherwise be asked about.
_ANY_KEY = _union(
    [
        _KEY_SHAPES,
        _URL_PASSWORD,
        *(p for plugin in _LIBRARY_PLUGINS for p in getattr(plugin, "screen", plugin.denylist)),
    ]
)


def _find_keys(text: str) -> list[Finding]:
    if not _ANY_KEY.search(text):
        return []
    spans = [(m.start(), m.end()) for m in _KEY_SHAPES.finditer(text)]
    spans += [(m.start(1), m.end(1)) for m in _URL_PASSWORD.finditer(text)]
    for plugin in _LIBRARY_PLUGINS:
        for secret in set(plugin.analyze_string(text)):
            start = text.find(secret)
            while secret and start >= 0:
                tail = _TOKEN_TAIL.match(text, start + len(secret))
                end = tail.end() if tail else start + len(secret)
                spans.append((start, end))
                start = text.find(secret, start + 1)
    return _without_overlaps(Finding(s, e, Kind.SECRET, text[s:e]) for s, e in spans)


def _find_bearer_tokens(text: str) -> list[Finding]:
    # The fingerprint is taken of scheme and credentials together, as it always was, so that
    # equal tokens still correlate with events masked before.
    return [Finding(m.end(2), m.end(), Kind.SECRET, m.group(0)) for m in _BEARER.finditer(text)]


# --- Card numbers --------------------------------------------------------------------------

# 13 to 19 digits, written without separators, with spaces or dashes between any digits (as
# printed on cards and typed into forms), or in groups of 3 to 6 digits between dots or
# slashes, one kind throughout (dots and slashes also write dates, versions and IP addresses,
# which have shorter groups). Not part of a longer number or of a decimal, nor glued to a
# letter: the digit runs of a UUID or a hex digest (233ed073-9110-4499-8258-7965cbf7efe9)
# may pass the Luhn check, but no card is written inside a word. Luhn-checked. A run with
# spaces or dashes is read whole, however long, and searched for the card within it (see
# _cards_in_run): a card is often written beside another number, its security code or expiry.
# A space between groups may be any that keeps them on one line, as a page or a word
# processor writes them (no-break, thin, figure, ideographic), or a zero-width character
# (a page's break opportunity, copied with the number); a dash, a hyphen of any kind: the
# digits of "4111\u00a01111\u00a01111\u00a01111" were kept in clear.
_CARD_SPACES = " \u00a0\u2007\u2009\u202f\u3000\u200b\u200c\u200d\u2060\ufeff"
_CARD_SEPARATOR = f"[{_CARD_SPACES}\\-\u2010\u2011\u2012\u2013\u00ad\uff0d]"
_CARD = re.compile(
    # The first digit, then what may not stand before it (written after it, so that the
    # search skips ahead to digits).
    r"\d(?<![\w-]\d)(?<!\d\.\d)"
    # Nor a partly shown card (•••• 1111): its last four digits do not start another.
    r"(?<!•\d)(?<!• \d)"
    rf"(?:(?:{_CARD_SEPARATOR}?\d){{12,}}|\d{{3}}(?P<sep>[./])\d{{3,6}}(?:(?P=sep)\d{{3,6}}){{1,3}})"
    r"(?![\w-])(?!\.\d)"
)


_NON_DIGITS = re.compile(r"\D")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        number = int(char)
        if index % 2 == 1:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


def _find_cards(text: str) -> list[Finding]:
    findings = []
    for match in _CARD.finditer(text):
        if match.group("sep") is None:
            findings += _cards_in_run(text, match.start(), match.end())
            continue
        digits = _NON_DIGITS.sub("", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            findings.append(Finding(match.start(), match.end(), Kind.CARD, digits))
    return findings


_SPACED_GROUP = re.compile(f"[^{_CARD_SPACES}]+")


def _cards_in_run(text: str, start: int, end: int) -> list[Finding]:
    """The cards in ``text[start:end]``, a run of digits with spaces or dashes: the whole run
    when it is one, else each stretch of its space-separated groups of four digits or more,
    as cards are printed, that holds 13 to 19 digits and passes the Luhn check, the longest
    from the earliest group on. So "4111 1111 1111 1111 123" (a card, then its security
    code) and "qty 1 4242424242424242" mask the card, where the whole run failed the check
    and the card was left; a list of small numbers is not read as one. A stretch never
    starts or ends at a dash, as a card never does (the digit groups of a UUID)."""
    whole = _NON_DIGITS.sub("", text[start:end])
    if 13 <= len(whole) <= 19 and luhn_valid(whole):
        return [Finding(start, end, Kind.CARD, whole)]
    groups = [
        (group.start(), group.end(), _NON_DIGITS.sub("", group.group(0)))
        for group in _SPACED_GROUP.finditer(text, start, end)
    ]
    findings = []
    first = 0
    while first < len(groups):
        stretch, found = "", None
        for index in range(first, len(groups)):
            digits = groups[index][2]
            if len(digits) < 4 or len(stretch) + len(digits) > 19:
                break
            stretch += digits
            if len(stretch) >= 13 and luhn_valid(stretch):
                found = (index, stretch)
        if found is None:
            first += 1
            continue
        last, card = found
        findings.append(Finding(groups[first][0], groups[last][1], Kind.CARD, card))
        first = last + 1
    return findings


# --- Bank account numbers (IBAN) ----------------------------------------------------------

# An IBAN, electronic (DE89370400440532013000) or printed in groups (DE89 3704 0044 0532 0130
# 00): its country's letters, its check digits, then letters and digits, not inside a word,
# read at most to the longest IBAN's length (a bounded run: linear however long the text).
# Whether a run starts with one is python-stdnum's to say: each country's length and format
# from SWIFT's IBAN registry, and the check digits (mod 97).
_IBAN_GAPS = " \u00a0"
_IBAN = re.compile(rf"(?<![\w-])[A-Z]{{2}}\d{{2}}(?:[{_IBAN_GAPS}]?[A-Z0-9]){{11,30}}")
_IBAN_START = re.compile(r"[A-Z]{2}\d\d")
_IBAN_SHORTEST, _IBAN_LONGEST = 15, 34


def _find_ibans(text: str) -> list[Finding]:
    findings = []
    at = 0
    # The next search starts where an IBAN found ends, not where the run read for it does:
    # the run may have read into the next one ("DE89... 00 GB29 ...").
    while match := _IBAN.search(text, at):
        at = match.start() + 1
        kept = [i for i in range(match.start(), match.end()) if text[i] not in _IBAN_GAPS]
        for length in range(min(len(kept), _IBAN_LONGEST), _IBAN_SHORTEST - 1, -1):
            end = kept[length - 1] + 1
            if end < len(text) and (text[end].isalnum() or text[end] == "-"):
                continue  # the run goes on here: not where an IBAN ends
            value = "".join(text[i] for i in kept[:length])
            if stdnum_iban.is_valid(value):
                findings.append(Finding(match.start(), end, Kind.IBAN, value))
                at = end
                break
    return findings


# --- E-mail addresses ----------------------------------------------------------------------

# Letters of any script; a partly shown address (``a***@example.com``) has no letter before
# its "@", so a second pass does not take it for an address.
# Searched from the start of a run only, so that a long run without "@" is read once.
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}\b")


def _find_emails(text: str) -> list[Finding]:
    return [
        Finding(m.start(), m.end(), Kind.EMAIL, m.group(0).lower()) for m in _EMAIL.finditer(text)
    ]


# --- Phone numbers -------------------------------------------------------------------------

# National numbers (without +) are looked for as written in these countries; international
# ones (+CC ...) whatever the country.
PHONE_REGIONS = ("US", "GB", "DE", "FR")
# Countries whose national numbers are written with their trunk prefix 0 (020 7946 0958), and
# the others (NANP numbers never start with 0): a candidate is read only as it can be written.
_TRUNK_ZERO_REGIONS = tuple(
    r
    for r in PHONE_REGIONS
    if getattr(phonenumbers.PhoneMetadata.metadata_for_region(r), "national_prefix", None) == "0"
)
_OTHER_REGIONS = tuple(r for r in PHONE_REGIONS if r not in _TRUNK_ZERO_REGIONS)

# What today's guarantees rule out although libphonenumber could read a number in it: dates,
# IP addresses, decimals and numbers with thousands separators.
_NOT_A_PHONE = (
    r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}"
    r"|\d{1,3}(?:\.\d{1,3}){3}|\d+[.,]\d+|\d{1,3}(?:,\d{3})+(?:\.\d+)?"
)
# The digit groups a phone number is written in: a national one in at most as many as the
# longest format of its country has (six: Germany's alternates; France's five), its trunk
# prefix apart (1 (800) 555-0199); an international one its country code and "(0)" too
# (+33 (0)1 23 45 67 89). A run of more groups is read a few groups at a time: a soup of
# short groups ("7 - 3 - 9 - 1 - ...", all one candidate) had the matcher try every group
# and every suffix of the run in turn, milliseconds a run, seconds for 30,000 characters.
_NATIONAL_GROUPS = 7
_INTERNATIONAL_GROUPS = 8
# Where the matcher is run: a run of digit groups with at most 4 separators between any two,
# no more groups than above, not touching another token's characters (a tel: link aside; the
# bullets of a partly shown number, •••58, count as one), and not a date, an IP address or a
# decimal standing alone. Every number reported must fit in such a run, so text without one
# costs a search and the matcher (tens of microseconds a run) is spared; a run of fewer than
# 8 digits is not handed to it (see _find_phones).
_PHONE_CANDIDATE = re.compile(
    r"(?:(?<![\w.:/+•-])(?<!• )|(?<=(?i:tel):))"
    rf"(?!(?:{_NOT_A_PHONE})(?![^\w\n]{{0,4}}\d))"
    rf"(?:\+\d+(?:[^\w\n+]{{1,4}}\d+){{0,{_INTERNATIONAL_GROUPS - 1}}}"
    # Eight digits in seven groups at most: one of them has two (a soup of single digits is
    # passed over in this search, not a group at a time).
    rf"|(?=\(?(?:\d[^\w\n+]{{1,4}}){{0,{_NATIONAL_GROUPS - 1}}}\d\d)"
    rf"\(?\d+(?:[^\w\n+]{{1,4}}\d+){{0,{_NATIONAL_GROUPS - 1}}})"
    r"(?![\w:/]|[.-]\w)"
)
# No phone number has more than 15 digits: a run is read to its last group within 20.
_MAX_RUN_DIGITS = 20
_GROUP = re.compile(r"\d+")
_TEL = re.compile(r"(?i)\btel:$")
_LAST_GROUP = re.compile(r"[^\w\n]+\d+$")
_FIRST_GROUP = re.compile(r"[+(]*\d+")
_TOKEN_BEFORE = re.compile(r"[\w.:/+•-]")
_TOKEN_AFTER = re.compile(r"[\w:/]|[.-]\w")
_NOT_A_PHONE_ALONE = re.compile(_NOT_A_PHONE)
# North American layout, (555) 123-4567 or 555-123-4567, taken for a phone number even when
# libphonenumber does not know it for a valid one: fictional 555 numbers are still written
# as phone numbers, and area codes keep being opened.
_NANP_LAYOUT = re.compile(r"(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}")


def _find_phones(text: str, budget: Budget) -> list[Finding]:
    findings: list[Finding] = []
    # What follows a number found is searched as the text after a mask is, from its own
    # start: the next number glued to it ("...0958+44 20 ...") then stands alone, as it
    # does when masked again.
    base, piece, at = 0, text, 0
    while candidate := _PHONE_CANDIDATE.search(piece, at):
        run, offset = candidate.group(0), candidate.start()
        groups = _GROUP.findall(run)
        digits = sum(map(len, groups))
        if digits > _MAX_RUN_DIGITS:
            run = _within_digits(run)
            digits = _digits(run)
        if digits < 8:
            # Too short for a phone number (a few groups of a soup of short ones, or a long
            # number cut to nothing): the next run starts at the next group, unread.
            at = offset + (candidate.group(0)[:1] in ("+", "(")) + len(groups[0])
            continue
        whole = run
        while True:
            # The matcher reads a run of digit groups as one number or none; when it finds
            # nothing, it reads the run less its last group: "+44 20 7946 0958 2026-11-21"
            # holds a number followed by a date.
            numbers = _numbers_in(run, offset, budget)
            found = [
                (start, end, number)
                for start, end, number in numbers or ()
                if _stands_alone(piece, start, end, number)
            ]
            last_group = _LAST_GROUP.search(run)
            if numbers is None or found or not last_group or not budget.second_reads:
                break
            run = run[: last_group.start()]
            if _digits(run) < 8:  # too short for a phone number: no need to read it
                break
            budget.second_reads -= 1
        if found:
            findings += [
                Finding(base + start, base + end, Kind.PHONE, _NON_DIGITS.sub("", number))
                for start, end, number in found
            ]
            end = max(end for _, end, _ in found)
            base, piece, at = base + end, piece[end:], 0
        elif (numbers is None and _may_hold_number(whole)) or (
            numbers is not None and not budget.second_reads and _may_hold_number_within(whole)
        ):
            # Not read to the end, the payload's matcher runs or this text's second reads
            # spent, and a number may be in what was not read: masked whole, digits
            # over-masked rather than a number left (a soup of "01 23 45 67 89 " is read a
            # run of seven groups at a time, in which the matcher finds nothing).
            end = offset + len(whole)
            findings.append(
                Finding(base + offset, base + end, Kind.PHONE, _NON_DIGITS.sub("", whole))
            )
            base, piece, at = base + end, piece[end:], 0
        elif budget.second_reads and (first_group := _FIRST_GROUP.match(piece, offset)):
            # The next run starts at this one's second group, where a number may start that
            # the groups before it hid: "ref 4242 (555) 123-4567".
            budget.second_reads -= 1
            at = first_group.end()
        else:
            at = offset + len(run)
    return _without_overlaps(findings)


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _within_digits(run: str) -> str:
    """``run`` to the end of its last group within _MAX_RUN_DIGITS digits that no other
    token's character follows (nothing when there is none)."""
    digits = 0
    end = 0
    for group in _GROUP.finditer(run):
        digits += group.end() - group.start()
        if digits > _MAX_RUN_DIGITS:
            break
        if not _TOKEN_AFTER.match(run, group.end()):
            end = group.end()
    return run[:end]


def _numbers_in(run: str, offset: int, budget: Budget) -> list[tuple[int, int, str]] | None:
    """The numbers the matcher finds in ``run``; None when the payload's matcher runs are
    spent before it has read the run."""
    if run.startswith("+"):
        # International: the country code says which country; possible for it is enough.
        if not _spend_matcher_run(budget):
            return None
        matches = PhoneNumberMatcher(run, "ZZ", leniency=Leniency.POSSIBLE)
        return [(offset + m.start, offset + m.end, m.raw_string) for m in matches]
    found = [(offset + m.start(), offset + m.end(), m.group(0)) for m in _NANP_LAYOUT.finditer(run)]
    if len(found) == 1 and found[0][2] == run:
        return found  # the whole run is one North American number: no need to ask further
    # National: valid in the country, and grouped as that country writes its numbers, so
    # that an order number such as 2024-000007 (a valid US number) is not taken for one.
    regions = _TRUNK_ZERO_REGIONS if run.lstrip("(").startswith("0") else _OTHER_REGIONS
    groups = _GROUP.findall(run)
    for region in _regions_to_ask(groups, regions):
        if not _spend_matcher_run(budget):
            return None
        for m in PhoneNumberMatcher(run, region, leniency=Leniency.STRICT_GROUPING):
            found.append((offset + m.start, offset + m.end, m.raw_string))
    return found


def _regions_to_ask(groups: list[str], regions: Iterable[str]) -> list[str]:
    """The ``regions`` a number of which may be written in the digit ``groups`` of a run."""
    # A number dialled from abroad (0041 79 123 45 67) is grouped as its own country writes
    # its numbers: not screened.
    if any(group.startswith(_INTERNATIONAL_PREFIXES) for group in groups):
        return list(regions)
    # No number of the other countries' can be written in these groups.
    return [region for region in regions if _may_be_grouped_as(groups, region)]


def _may_hold_number(run: str) -> bool:
    """Whether the matcher might find a number in ``run`` or a part of it, whatever the
    country, as far as a look at its digit groups tells."""
    return (
        run.startswith("+")
        or _NANP_LAYOUT.search(run) is not None
        or bool(_regions_to_ask(_GROUP.findall(run), PHONE_REGIONS))
    )


def _may_hold_number_within(run: str) -> bool:
    """Whether some of ``run``'s digit groups in a row, not all of them, 8 digits at least,
    may hold a number (see _may_hold_number): what second reads would ask the matcher."""
    spans = [group.span() for group in _GROUP.finditer(run)]
    for first in range(len(spans)):
        # From the separator before the group: a "(" may open a number there.
        start = spans[first - 1][1] if first else 0
        for last in range(first, len(spans) - (first == 0)):
            part = run[start : spans[last][1]]
            if _digits(part) >= 8 and _may_hold_number(part):
                return True
    return False


def _spend_matcher_run(budget: Budget) -> bool:
    if budget.matcher_runs <= 0:
        return False
    budget.matcher_runs -= 1
    return True


# A format's pattern, as libphonenumber's metadata writes them: (\d{3})(\d{3,4}).
_FORMAT_GROUP = re.compile(r"\(\\d(?:\{(\d+)(?:,(\d+))?\})?\)")
_FORMAT_PATTERN = re.compile(rf"(?:{_FORMAT_GROUP.pattern})+")


def _metadata(region: str) -> phonenumbers.PhoneMetadata:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    assert metadata is not None, region  # PHONE_REGIONS are regions libphonenumber knows
    return metadata


def _groupings(region: str) -> frozenset[tuple[int, ...]] | None:
    """The lengths of the digit groups a valid number of ``region``'s national significant
    number (without trunk prefix) can be written in and still pass the matcher's strict
    grouping: its digits in the groups of one of the country's formats (or alternate
    formats), some of them written together, or all of them in one group."""
    metadata = _metadata(region)
    possible = set(metadata.general_desc.possible_length if metadata.general_desc else ())
    formats = [
        *metadata.number_format,
        *(metadata.intl_number_format or ()),
        # The matcher's own (a private name: without it, the matcher has none either).
        *getattr(phonenumbermatcher, "_ALT_NUMBER_FORMATS", {}).get(metadata.country_code, ()),
    ]
    groupings: set[tuple[int, ...]] = {(length,) for length in possible}
    for number_format in formats:
        if not _FORMAT_PATTERN.fullmatch(number_format.pattern):
            return None  # a format not read here: the country's numbers are not screened
        ranges = [
            (int(low or 1), int(high or low or 1))
            for low, high in _FORMAT_GROUP.findall(number_format.pattern)
        ]
        for lengths in product(*(range(low, high + 1) for low, high in ranges)):
            if sum(lengths) not in possible:
                continue
            # Each group ends the number's written group or not: every way of joining them.
            for joins in product((False, True), repeat=len(lengths) - 1):
                written = [lengths[0]]
                for length, joined in zip(lengths[1:], joins, strict=True):
                    if joined:
                        written[-1] += length
                    else:
                        written.append(length)
                groupings.add(tuple(written))
    return frozenset(groupings)


def _may_be_grouped_as(groups: list[str], region: str) -> bool:
    """Whether some of a run's digit ``groups``, in a row, hold a number of ``region``'s
    written in one of its groupings: the first of them less the trunk prefix if the number
    is written with it (0 or 1, apart or not), the last followed by anything (an extension,
    another number)."""
    groupings = _GROUPINGS[region]
    prefixes = _TRUNK_PREFIXES[region]
    if groupings is None:
        return True
    for first, group in enumerate(groups):
        cuts: Iterable[int]
        if prefixes is None:
            cuts = range(len(group))
        else:
            cuts = [len(prefix) for prefix in prefixes if group.startswith(prefix)]
        for cut in cuts:
            if cut >= len(group):
                continue  # the trunk prefix apart: the number starts at the next group
            written: tuple[int, ...] = (len(group) - cut,)
            for next_group in (None, *groups[first + 1 :]):
                if next_group is not None:
                    written = (*written, len(next_group))
                if sum(written) > _MAX_NATIONAL_DIGITS:
                    break
                if written in groupings:
                    return True
    return False


def _trunk_prefixes(region: str) -> tuple[str, ...] | None:
    """What may stand before the national significant number of a number written without
    "+": the trunk prefix (GB: 0 or 180020), the country code (44 20 ...), or both
    (1 1 986 ...); None when the trunk prefix is not a list of digit strings."""
    metadata = _metadata(region)
    pattern = metadata.national_prefix_for_parsing or metadata.national_prefix or ""
    if metadata.national_prefix_transform_rule or not re.fullmatch(r"\d+(?:\|\d+)*", pattern):
        return None
    trunk = ("", *pattern.split("|"))
    return tuple(f"{code}{prefix}" for code in ("", str(metadata.country_code)) for prefix in trunk)


_MAX_NATIONAL_DIGITS = 17
_GROUPINGS = {region: _groupings(region) for region in PHONE_REGIONS}
_TRUNK_PREFIXES = {region: _trunk_prefixes(region) for region in PHONE_REGIONS}
# How the four countries dial abroad (00, 011), or any 0 when one is not a digit string.
_INTERNATIONAL_PREFIXES = tuple(
    prefix if prefix and prefix.isdigit() else "0"
    for region in PHONE_REGIONS
    for prefix in [_metadata(region).international_prefix]
)


def _stands_alone(text: str, start: int, end: int, number: str) -> bool:
    # Touching another token (a UUID's groups, an IP's port, a timestamp, a path) is no phone;
    # a tel: link is.
    if _TOKEN_BEFORE.match(text[start - 1 : start]) and not _TEL.search(text, 0, start):
        return False
    if _TOKEN_AFTER.match(text, end):
        return False
    if not 8 <= _digits(number) <= 15:
        return False
    if number.startswith("+"):
        return True
    # A bare run of digits is an order number, not a phone number.
    return not number.isdigit() and not _NOT_A_PHONE_ALONE.fullmatch(number)


# --- All of them, in order -----------------------------------------------------------------

# Words one of which every assignment or auth scheme holds (searched in case-folded text).
_ASSIGNMENT_WORD = re.compile(
    r"pass|pwd|secret|token|key|auth|cookie|sessionid|credential|card|cvc|cvv|signature"
)
_SCHEME_WORD = re.compile(r"bearer|token|basic")
# Every key shape is a run of at least 16 characters that may stand in a key, not all of them
# lower-case hex digits or dashes (hashes and UUIDs, common in audit data, hold no key
# shape), except for credentials in a URL, npm's _authToken lines, short Slack tokens
# and Entra secrets.
_LONG_RUN = re.compile(r"(?<![\w+/=.\\-])(?=[\w+/=.\\-]{16})[0-9a-f-]*+(?:[^\W0-9a-f]|[+/=.\\])")
# Necessary for a card number: 13 digits with at most one separator between two; for a
# phone number: 8 digits with at most 4 separators between two.
_THIRTEEN_DIGITS = re.compile(rf"\d(?:(?:[./]|{_CARD_SEPARATOR})?\d){{12}}")
_EIGHT_DIGITS = re.compile(r"\d(?:[^\w\n]{0,4}\d){7}")


def _may_assign(text: str, folded: str) -> bool:
    return ("=" in text or ":" in text or "," in text) and _ASSIGNMENT_WORD.search(
        folded
    ) is not None


def _may_name_scheme(text: str, folded: str) -> bool:
    return _SCHEME_WORD.search(folded) is not None


def _may_hold_key(text: str, folded: str) -> bool:
    return (
        "://" in text
        or "_authToken" in text
        or "xox" in folded
        or "Q~" in text  # an Entra secret's "~" may cut it into runs shorter than 16
        or _LONG_RUN.search(text) is not None
    )


def _may_hold_private_key(text: str, folded: str) -> bool:
    return "PRIVATE KEY" in text


def _may_hold_card(text: str, folded: str) -> bool:
    return _THIRTEEN_DIGITS.search(text) is not None


def _may_hold_iban(text: str, folded: str) -> bool:
    return _IBAN_START.search(text) is not None


def _may_hold_email(text: str, folded: str) -> bool:
    return "@" in text


def _may_hold_phone(text: str, folded: str) -> bool:
    return _EIGHT_DIGITS.search(text) is not None


def _simple(find: Callable[[str], list[Finding]]) -> Callable[[str, Budget], list[Finding]]:
    return lambda text, _budget: find(text)


SECRETS = (
    Detector("private_key", _may_hold_private_key, _simple(_find_private_keys)),
    Detector("assignment", _may_assign, _simple(_find_assignments)),
    Detector("key", _may_hold_key, _simple(_find_keys)),
    Detector("bearer", _may_name_scheme, _simple(_find_bearer_tokens)),
)
PERSONAL_DATA = (
    # Before cards and phone numbers: an IBAN's digit groups may read as either.
    Detector("iban", _may_hold_iban, _simple(_find_ibans)),
    Detector("card", _may_hold_card, _simple(_find_cards)),
    Detector("email", _may_hold_email, _simple(_find_emails)),
    Detector("phone", _may_hold_phone, _find_phones),
)
