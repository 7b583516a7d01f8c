"""Each detector, table first: what it masks (shown as ``<kind:value>`` by a renderer that
tells what was found and what its fingerprint is taken of) and the near-misses it leaves."""

from __future__ import annotations

import random
import re
import time
from typing import Any

import phonenumbers
import pytest
from django.conf import settings

from audit.detectors import PHONE_REGIONS
from audit.masking import mask_text, mask_value


def shown(kind: str, value: str) -> str:
    return f"<{kind}:{value}>"


def masks(text: str) -> str:
    return mask_text(text, render=shown)


JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwi"
    "aWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
STRIPE_LIVE = "sk_live_" + "51HqLyjWDarjtT1zdp7dcXcWq9" + "x" * 73  # longer than the plugin's 24
GITHUB_CLASSIC = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
GITHUB_FINE = "github_pat_11ABCDEFG0123456789_" + "a" * 59
GITLAB = "glpat-" + "xYz0123456789AbCdEfGh"
SLACK = "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
SENDGRID = "SG." + "a" * 22 + "." + "b" * 43
TWILIO = "SK" + "0123456789abcdef" * 2
COUNTERSIGN = "cst_ab12cd_" + "Q" * 32
GOOGLE_ACCESS = "ya29.a0AfH6SMBx3kQ9zYwVbN0pLmT7rEuIo2-AbC_dEf"
GOOGLE_REFRESH = "1//0gK7fXw3Lq9ZCgYIARAAGBASNwF-L9IrAbCdEfGhIjKlMnOp"
GOOGLE_CLIENT_SECRET = "GOCSPX-1aBcDeFgHiJkLmNoPqRsTuVwXyZ0"
ENTRA_SECRET = "xY7" + "8Q~" + "Ab1.Cd2~Ef3_Gh4-Ij5Kl6Mn7Op8Qr9St0"
HUGGING_FACE = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
SLACK_APP = "xapp-1-A0123ABCDEF-1234567890123-" + "0123456789abcdef" * 4
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\ndef==\n-----END RSA PRIVATE KEY-----"
PGP_PRIVATE_KEY = (
    "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGR0abc\ndef==\n"
    "-----END PGP PRIVATE KEY BLOCK-----"
)

CARDS = [
    ("4111 1111 1111 1111", "<card:4111111111111111>"),
    ("4111-1111-1111-1111", "<card:4111111111111111>"),
    ("4111.1111.1111.1111", "<card:4111111111111111>"),
    ("4111/1111/1111/1111", "<card:4111111111111111>"),
    ("4111111111111111", "<card:4111111111111111>"),
    ("paid with 5555 5555 5555 4444, thanks", "paid with <card:5555555555554444>, thanks"),
    ("amex 3782 822463 10005.", "amex <card:378282246310005>."),
    ("amex 3782.822463.10005", "amex <card:378282246310005>"),
    ("nineteen 4111 1111 1111 1111 110", "nineteen <card:4111111111111111110>"),
    (
        "two 4111111111111111,4242424242424242",
        "two <card:4111111111111111>,<card:4242424242424242>",
    ),
    ("/cards/4111111111111111/refund", "/cards/<card:4111111111111111>/refund"),
    ("card 4111111111111111/12 expiry", "card <card:4111111111111111>/12 expiry"),
    # Beside another number (its security code, its expiry, a quantity): the card alone.
    ("card 4111111111111111 123", "card <card:4111111111111111> 123"),
    ("card 4111 1111 1111 1111 12/27", "card <card:4111111111111111> 12/27"),
    ("qty 1 4242 4242 4242 4242", "qty 1 <card:4242424242424242>"),
    ("ref 1234 4111 1111 1111 1111", "ref 1234 <card:4111111111111111>"),
    ("4111111111111111 4242424242424242", "<card:4111111111111111> <card:4242424242424242>"),
    # Grouped as a page or a word processor writes it: no-break, narrow or thin spaces,
    # zero-width spaces (a page's break opportunities, copied with the number), a
    # non-breaking hyphen. The digits were kept in clear.
    ("card 4111\u00a01111\u00a01111\u00a01111.", "card <card:4111111111111111>."),
    ("4111\u202f1111\u202f1111\u202f1111", "<card:4111111111111111>"),
    ("4111\u20091111\u20091111\u20091111 123", "<card:4111111111111111> 123"),
    ("4111\u200b1111\u200b1111\u200b1111", "<card:4111111111111111>"),
    ("4111\u20111111\u20111111\u20111111", "<card:4111111111111111>"),
    # Near-misses: left as they are.
    ("4111 1111 1111 1112", "4111 1111 1111 1112"),  # fails the Luhn check
    ("4111\u00a01111\u00a01111\u00a01112", "4111\u00a01111\u00a01111\u00a01112"),
    ("4111.1111.1111.1112", "4111.1111.1111.1112"),
    ("4242-4242-4242-4241", "4242-4242-4242-4241"),
    ("order 2024-06-01 ref 1234567890", "order 2024-06-01 ref 1234567890"),
    ("ip 192.168.100.200 port 8080", "ip 192.168.100.200 port 8080"),
    ("call 3f2a1c2b-1111-2222-3333-444455556666", "call 3f2a1c2b-1111-2222-3333-444455556666"),
    # A UUID whose digit run (073-9110-4499-8258-7965) passes the Luhn check: inside a word.
    ("call 233ed073-9110-4499-8258-7965cbf7efe9", "call 233ed073-9110-4499-8258-7965cbf7efe9"),
    ("digest ab4111111111111111cd", "digest ab4111111111111111cd"),
    ("at 1700000000.123456", "at 1700000000.123456"),  # a timestamp with microseconds
    ("pi 3.141592653589793", "pi 3.141592653589793"),
    ("amount 1,234,567.89 EUR", "amount 1,234,567.89 EUR"),
    ("on 2024/06/01 and 01.06.2024", "on 2024/06/01 and 01.06.2024"),
    ("twelve digits 4111 1111 1111", "twelve digits 4111 1111 1111"),
    ("4111 1111 1111 1112 123", "4111 1111 1111 1112 123"),  # no card within it either
]

SECRET_ASSIGNMENTS = [
    ("password=hunter2xyz", "password=<secret:hunter2xyz>"),
    ("password: hunter2", "password: <secret:hunter2>"),
    ('Password = "hunter2 two"', 'Password = "<secret:hunter2 two>"'),
    ("password='hunter2 two' next", "password='<secret:hunter2 two>' next"),
    ('{"api_key": "abc def ghi", "n": 1}', '{"api_key": "<secret:abc def ghi>", "n": 1}'),
    ('{"password":"a\\"b c"}', '{"password":"<secret:a\\"b c>"}'),
    ('{\\"password\\": \\"hunter2 two\\"}', '{\\"password\\": \\"<secret:hunter2 two>\\"}'),
    ("{'secret': 'x y'}", "{'secret': '<secret:x y>'}"),
    ("PASSWORD=s3cr3t", "PASSWORD=<secret:s3cr3t>"),
    ("DB_PASSWORD=s3cr3t npm start", "DB_PASSWORD=<secret:s3cr3t> npm start"),
    (
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_SECRET_ACCESS_KEY=<secret:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY>",
    ),
    ("/cb?access_token=abc123&next=/home", "/cb?access_token=<secret:abc123>&next=/home"),
    ("Server=db;Password=hunter2;Database=app", "Server=db;Password=<secret:hunter2>;Database=app"),
    ("X-Api-Key: abc123def", "X-Api-Key: <secret:abc123def>"),
    ("client_secret => 'xyz'", "client_secret => '<secret:xyz>'"),
    ("the password: hunter2.", "the password: <secret:hunter2>."),
    ("{password=hunter2}", "{password=<secret:hunter2>}"),
    ('password="never closed', 'password="<secret:never closed>'),
    ("cvv: 123", "cvv: <secret:123>"),
    ("token := 'abc'", "token := '<secret:abc>'"),
    ("run --password=hunter2 --verbose", "run --password=<secret:hunter2> --verbose"),
    # An Authorization header of another scheme than Bearer, Basic or Token: the scheme
    # was masked and the credentials after it kept in clear.
    (
        "Authorization: ApiKey k3y-0123456789abcdef",
        "Authorization: <secret:ApiKey k3y-0123456789abcdef>",
    ),
    (
        "curl -H 'Proxy-Authorization: SSWS 00QCjAl4MlV-WPXM' https://x.example",
        "curl -H 'Proxy-Authorization: <secret:SSWS 00QCjAl4MlV-WPXM>' https://x.example",
    ),
    ("authorization=Bot MTk4NjIyNDgzNDcx.", "authorization=<secret:Bot MTk4NjIyNDgzNDcx>."),
    # Words after the name, not credentials: only the first is read as its value.
    ("authorization: granted by the manager", "authorization: <secret:granted> by the manager"),
    # Name-value pairs written out: a list of headers in a log line, in JSON quoted in JSON.
    (
        "headers: [('Accept', '*/*'), ('X-Api-Key', 'opaque-1234')]",
        "headers: [('Accept', '*/*'), ('X-Api-Key', '<secret:opaque-1234>')]",
    ),
    (
        '{"h": "[[\\"Authorization\\", \\"ApiKey k-1\\"]]"}',
        '{"h": "[[\\"Authorization\\", \\"<secret:ApiKey k-1>\\"]]"}',
    ),
    ('tags: ["password", "reset", "help"]', 'tags: ["password", "reset", "help"]'),
    # Backquoted, as Markdown writes code (an agent's reasoning is Markdown).
    ("use password: `hunter2 two` now", "use password: `<secret:hunter2 two>` now"),
    ("`api_key`: `abc123`", "`api_key`: `<secret:abc123>`"),
    # A Cookie header's value is every cookie in it, not only the first.
    (
        "Cookie: theme=dark; sessionid=abc123def456",
        "Cookie: <secret:theme=dark; sessionid=abc123def456>",
    ),
    (
        'curl -H "Cookie: lang=en; session=s3cr3t" https://x.example',
        'curl -H "Cookie: <secret:lang=en; session=s3cr3t>" https://x.example',
    ),
    # Words after the name, not cookies: only the first is read as its value, as any name's.
    (
        "Set-Cookie: missing on the login answer, so the session is lost each time",
        "Set-Cookie: <secret:missing> on the login answer, so the session is lost each time",
    ),
    (
        "Cookie: none set before consent, as the law asks",
        "Cookie: none set before consent, as the law asks",
    ),
    # camelCase and PascalCase names, as JavaScript and .NET write them.
    ('{"accessToken": "ya29.a0AfH6SMB x"}', '{"accessToken": "<secret:ya29.a0AfH6SMB x>"}'),
    ("clientSecret=abc123", "clientSecret=<secret:abc123>"),
    ("GitHubToken: abc123", "GitHubToken: <secret:abc123>"),
    # Near-misses.
    ("token_cost 1200 tokens", "token_cost 1200 tokens"),
    (
        '"input_tokens": 800, "token_cost": {"usd": 0.02}',
        '"input_tokens": 800, "token_cost": {"usd": 0.02}',
    ),
    ("password reset requested", "password reset requested"),
    ("passwords: 3", "passwords: 3"),
    ('{"secret": false, "password": null}', '{"secret": false, "password": null}'),
    ("idempotency_key=abc-123", "idempotency_key=abc-123"),
    ("OAuth: enabled", "OAuth: enabled"),
    ("maxTokens: 1200, tokenCount: 3", "maxTokens: 1200, tokenCount: 3"),
    ("password:\n  next: 1", "password:\n  next: 1"),
    ('"password": ""', '"password": ""'),
]

KEYS = [
    ("AKIAIOSFODNN7EXAMPLE", "<secret:AKIAIOSFODNN7EXAMPLE>"),
    (f"key {STRIPE_LIVE}.", f"key <secret:{STRIPE_LIVE}>."),
    ("key sk_test_abcdefgh12345678", "key <secret:sk_test_abcdefgh12345678>"),
    ("pk_live_abcdefgh12345678", "<secret:pk_live_abcdefgh12345678>"),
    (
        "key sk-ant-api03-abcdefghijklmnopqrstuvwx",
        "key <secret:sk-ant-api03-abcdefghijklmnopqrstuvwx>",
    ),
    (GITHUB_CLASSIC, f"<secret:{GITHUB_CLASSIC}>"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123", "<secret:ghp_abcdefghijklmnopqrstuvwxyz0123>"),
    (GITHUB_FINE, f"<secret:{GITHUB_FINE}>"),
    (f"gitlab {GITLAB}", f"gitlab <secret:{GITLAB}>"),
    (f"slack {SLACK}", f"slack <secret:{SLACK}>"),
    (SENDGRID, f"<secret:{SENDGRID}>"),
    (f"twilio {TWILIO}", f"twilio <secret:{TWILIO}>"),
    (f"jwt {JWT} end", f"jwt <secret:{JWT}> end"),
    (f"agent token {COUNTERSIGN}", f"agent token <secret:{COUNTERSIGN}>"),
    ("postgres://app:hunter2@db.internal/app", "postgres://app:<secret:hunter2>@db.internal/app"),
    # A password without a user name, as Redis URLs have it.
    ("redis://:hunter2@cache.internal:6379/0", "redis://:<secret:hunter2>@cache.internal:6379/0"),
    (f"key:\n{PRIVATE_KEY}\nend", f"key:\n<secret:{PRIVATE_KEY}>\nend"),
    (f"gpg:\n{PGP_PRIVATE_KEY}\nend", f"gpg:\n<secret:{PGP_PRIVATE_KEY}>\nend"),
    (
        "Authorization: Bearer abcdefghijklmnop1234",
        "Authorization: Bearer <secret:Bearer abcdefghijklmnop1234>",
    ),
    (
        "Authorization: Basic dXNlcjpwYXNzd29yZA==",
        "Authorization: Basic <secret:Basic dXNlcjpwYXNzd29yZA==>",
    ),
    # Google OAuth's access and refresh tokens and clients' secrets, Microsoft Entra client
    # secrets, Hugging Face tokens, Slack app-level tokens: no plugin knows them.
    (f"use {GOOGLE_ACCESS} now", f"use <secret:{GOOGLE_ACCESS}> now"),
    (f"refresh {GOOGLE_REFRESH}", f"refresh <secret:{GOOGLE_REFRESH}>"),
    (f"client {GOOGLE_CLIENT_SECRET}.", f"client <secret:{GOOGLE_CLIENT_SECRET}>."),
    (f"entra {ENTRA_SECRET} end", f"entra <secret:{ENTRA_SECRET}> end"),
    (f"hf {HUGGING_FACE}", f"hf <secret:{HUGGING_FACE}>"),
    (f"app {SLACK_APP}", f"app <secret:{SLACK_APP}>"),
    # Near-misses.
    ("ya29.short and GOCSPX-short", "ya29.short and GOCSPX-short"),
    (
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ),
    ("eyJhbGciOi.notjson.atall", "eyJhbGciOi.notjson.atall"),  # not a JWT: nothing decodes
    ("sk_live_abc and AKIA1234", "sk_live_abc and AKIA1234"),  # too short for a key
    ("https://example.com/path?x=1", "https://example.com/path?x=1"),
]

IBANS = [
    ("IBAN DE89370400440532013000.", "IBAN <iban:DE89370400440532013000>."),
    ("pay to DE89 3704 0044 0532 0130 00 today", "pay to <iban:DE89370400440532013000> today"),
    ("GB29 NWBK 6016 1331 9268 19, ref 7", "<iban:GB29NWBK60161331926819>, ref 7"),
    ("FR14 2004 1010 0505 0001 3M02 606", "<iban:FR1420041010050500013M02606>"),
    # One after another: the run read for the first must not hide the second.
    (
        "from DE89370400440532013000 GB29NWBK60161331926819",
        "from <iban:DE89370400440532013000> <iban:GB29NWBK60161331926819>",
    ),
    # Near-misses: wrong check digits, one character short or glued to more, no country.
    ("DE89370400440532013001", "DE89370400440532013001"),
    ("DE8937040044053201300", "DE8937040044053201300"),
    ("DE89370400440532013000X", "DE89370400440532013000X"),
    ("ZZ89370400440532013000", "ZZ89370400440532013000"),
    ("order AB12CDEF34", "order AB12CDEF34"),
]

EMAILS = [
    ("Ada.Lovelace@Example.com", "<email:ada.lovelace@example.com>"),
    ("to bob+tag@mail.example.co.uk, please", "to <email:bob+tag@mail.example.co.uk>, please"),
    ("(ops@example.org)", "(<email:ops@example.org>)"),
    ("josé.garcía@correo.es", "<email:josé.garcía@correo.es>"),
    ("mailto:zoë@example.de?subject=hi", "mailto:<email:zoë@example.de>?subject=hi"),
    # Near-misses.
    ("a***@example.com", "a***@example.com"),  # a partly shown address
    ("ping @handle at example.com", "ping @handle at example.com"),
    ("user@localhost", "user@localhost"),
    ("v1.2@3.4", "v1.2@3.4"),
]

PHONES = [
    ("call +44 20 7946 0958", "call <phone:442079460958>"),
    ("+15551234567", "<phone:15551234567>"),
    ("020 7946 0958", "<phone:02079460958>"),
    ("(555) 123-4567", "<phone:5551234567>"),
    ("555-123-4567.", "<phone:5551234567>."),
    ("call (202) 555-0143 now", "call <phone:2025550143> now"),
    ("+49 30 1234567", "<phone:49301234567>"),
    ("030 1234567", "<phone:0301234567>"),
    ("+33 1 23 45 67 89", "<phone:33123456789>"),
    ("01 23 45 67 89", "<phone:0123456789>"),
    ("tel:+1-202-555-0143", "tel:<phone:12025550143>"),
    ("+1 (415) 555-0123 ext. 42", "<phone:14155550123> ext. 42"),
    ("call +44 20 7946 0958 2026-11-21", "call <phone:442079460958> 2026-11-21"),
    ("ref 4242 (555) 123-4567", "ref 4242 <phone:5551234567>"),
    ("+44 20 7946 0958+49 30 1234567", "<phone:442079460958><phone:49301234567>"),
    (
        "order 2024-000007",
        "order 2024-000007",
    ),  # a valid US number, not grouped as one  # an extension is no one's
    # Near-misses: UUIDs, IP addresses, timestamps, dates, decimals, bare order numbers.
    ("call 3f2a1c2b-1111-2222-3333-444455556666", "call 3f2a1c2b-1111-2222-3333-444455556666"),
    # A UUID whose digit run (073-9110-4499-8258-7965) passes the Luhn check: inside a word.
    ("call 233ed073-9110-4499-8258-7965cbf7efe9", "call 233ed073-9110-4499-8258-7965cbf7efe9"),
    ("digest ab4111111111111111cd", "digest ab4111111111111111cd"),
    ("from 192.168.100.200:8080", "from 192.168.100.200:8080"),
    ("ip 10.20.30.40 ok", "ip 10.20.30.40 ok"),
    ("at 2026-11-21T21:44:00.123456+00:00", "at 2026-11-21T21:44:00.123456+00:00"),
    ("at 2026-11-21 21:44:00", "at 2026-11-21 21:44:00"),
    ("order 2024-06-01 ref 1234567890", "order 2024-06-01 ref 1234567890"),
    ("on 12.06.2024 or 12/06/2024", "on 12.06.2024 or 12/06/2024"),
    ("price 1234.5678", "price 1234.5678"),
    ("amount 1,234,567.89 EUR and version 1.2.3", "amount 1,234,567.89 EUR and version 1.2.3"),
    ("ref 4155550123", "ref 4155550123"),
    ("ORD-2024-555-0143", "ORD-2024-555-0143"),
    ("pages 123-456", "pages 123-456"),
    ("1234 5678", "1234 5678"),
]

# Phone numbers as people write them, each masked (the detector hands libphonenumber only
# spans that can hold one: these prove the narrowing leaves none of them out).
REAL_PHONES = [
    ("+44 (0)20 7946 0958", "<phone:4402079460958>"),
    ("+49 (0)30 1234567", "<phone:490301234567>"),
    ("+49 30 123 456 78", "<phone:493012345678>"),
    ("+33 (0)1 23 45 67 89", "<phone:330123456789>"),
    ("+33 6 12 34 56 78", "<phone:33612345678>"),
    ("+1 415 555 0123", "<phone:14155550123>"),
    ("+1-415-555-0123", "<phone:14155550123>"),
    ("+1.415.555.0123", "<phone:14155550123>"),
    ("+31 6 12 34 56 78", "<phone:31612345678>"),
    ("+41 79 123 45 67", "<phone:41791234567>"),
    ("+7 (495) 123-45-67", "<phone:74951234567>"),
    ("+39 06 1234 5678", "<phone:390612345678>"),
    ("+61 2 9876 5432", "<phone:61298765432>"),
    ("(020) 7946 0958", "<phone:02079460958>"),
    ("020-7946-0958", "<phone:02079460958>"),
    ("020.7946.0958", "<phone:02079460958>"),
    ("0161 496 0000", "<phone:01614960000>"),
    ("07700 900123", "<phone:07700900123>"),
    ("030 123 456 78", "<phone:03012345678>"),
    ("030/1234567", "<phone:0301234567>"),
    ("(030) 1234567", "<phone:0301234567>"),
    ("01.23.45.67.89", "<phone:0123456789>"),
    ("01-23-45-67-89", "<phone:0123456789>"),
    ("06 12 34 56 78", "<phone:0612345678>"),
    ("415.555.0123", "<phone:4155550123>"),
    ("(415)555-0123", "<phone:4155550123>"),
    ("1-800-555-0199", "<phone:18005550199>"),
    ("1 (800) 555-0199", "<phone:18005550199>"),
    ("1 415 555 0123", "<phone:14155550123>"),
    ("800 555 0199", "<phone:8005550199>"),
    (
        "Call me at 415-555-0123 or +44 20 7946 0958, thanks.",
        "Call me at <phone:4155550123> or <phone:442079460958>, thanks.",
    ),
    (
        "Tel.: 020 7946 0958; mobile: 07700 900123.",
        "Tel.: <phone:02079460958>; mobile: <phone:07700900123>.",
    ),
    (
        "Numbers: 020 7946 0958, 020 7946 0959, 020 7946 0960 and (415) 555-0123",
        "Numbers: <phone:02079460958>, <phone:02079460959>, <phone:02079460960> and"
        " <phone:4155550123>",
    ),
    (
        "020 7946 0958 020 7946 0959 020 7946 0960",
        "<phone:02079460958> <phone:02079460959> <phone:02079460960>",
    ),
    (
        "+44 20 7946 0958 / +44 20 7946 0959",
        "<phone:442079460958> / <phone:442079460959>",
    ),
    ("415-555-0123 / 415-555-0124", "<phone:4155550123> / <phone:4155550124>"),
    (
        "phone (415) 555-0123 ext. 42 or +33 1 23 45 67 89.",
        "phone <phone:4155550123> ext. 42 or <phone:33123456789>.",
    ),
    # Wide separators, a trunk prefix apart, dialled from abroad, an extension after "#".
    ("020 - 7946 - 0958", "<phone:02079460958>"),
    ("01 - 23 - 45 - 67 - 89", "<phone:0123456789>"),
    ("+44 - 20 - 7946 - 0958", "<phone:442079460958>"),
    ("030 / 12 34 56 78", "<phone:03012345678>"),
    ("030 -- 1234567", "<phone:0301234567>"),
    ("020  7946  0958", "<phone:02079460958>"),
    ("0 30 1234567", "<phone:0301234567>"),
    ("0041 79 123 45 67", "<phone:0041791234567>"),
    ("00 41 79 123 45 67", "<phone:0041791234567>"),
    ("0044 (0)20 7946 0958", "<phone:004402079460958>"),
    ("(415) 555-0123 #42", "<phone:415555012342>"),
    # A number read after a long run of other digit groups.
    (
        "ids 12 345 6 7 89 1 23 45 6 789 0 12 (020) 7946 0958 and 4 56",
        "ids 12 345 6 7 89 1 23 45 6 789 0 12 <phone:02079460958> and 4 56",
    ),
]

URL_ENCODED = [
    ("to=alice%40example.com", "to=<email:alice@example.com>"),
    (
        "GET /search?q=4111%201111%201111%201111&page=2 HTTP/1.1",
        "GET /search?q=<card:4111111111111111>&page=2 HTTP/1.1",
    ),
    ("q=4111+1111+1111+1111", "q=<card:4111111111111111>"),
    ("/users/alice%40example.com/profile", "/users/<email:alice@example.com>/profile"),
    ("next=%2Fhome%3Fto%3Dbob%2540example.com", "next=/home?to=<email:bob@example.com>"),
    ("phone=%2B44%2020%207946%200958", "phone=<phone:442079460958>"),
    ("q=Bearer%20abcdefghijklmnop1234", "q=Bearer <secret:Bearer abcdefghijklmnop1234>"),
    ("password=hunter%202", "password=<secret:hunter%202>"),  # masked raw, to its end
    # Near-misses: decoded text with nothing to mask stays encoded.
    ("discount=50%25", "discount=50%25"),
    ("path=/a%20b/c", "path=/a%20b/c"),
    ("q=hello+world", "q=hello+world"),
]


@pytest.mark.parametrize(("text", "expected"), CARDS)
def test_card_numbers(text: str, expected: str) -> None:
    assert masks(text) == expected


@pytest.mark.parametrize(("text", "expected"), SECRET_ASSIGNMENTS)
def test_secret_assignments(text: str, expected: str) -> None:
    assert masks(text) == expected


@pytest.mark.parametrize(("text", "expected"), KEYS)
def test_keys_and_tokens(text: str, expected: str) -> None:
    assert masks(text) == expected


@pytest.mark.parametrize(("text", "expected"), IBANS)
def test_ibans(text: str, expected: str) -> None:
    assert masks(text) == expected


@pytest.mark.parametrize(("text", "expected"), EMAILS)
def test_email_addresses(text: str, expected: str) -> None:
    assert masks(text) == expected


@pytest.mark.parametrize(("text", "expected"), PHONES)
def test_phone_numbers(text: str, expected: str) -> None:
    assert masks(text) == expected


@pytest.mark.parametrize(("text", "expected"), REAL_PHONES)
def test_phone_numbers_as_people_write_them(text: str, expected: str) -> None:
    assert masks(text) == expected


@pytest.mark.parametrize("region", PHONE_REGIONS)
def test_every_kind_of_national_number_is_masked(region: str) -> None:
    """libphonenumber's example number of each kind (fixed line, mobile, toll free, ...) of
    each country read nationally, as the country writes it and with dashes: the groupings
    the detector screens runs with come from the same metadata, whatever its version."""
    for kind in phonenumbers.PhoneNumberType.values():
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
        digits = "".join(c for c in national if c.isdigit())
        if len(digits) < 8 or national.isdigit():
            continue  # a short code; a bare run of digits (an order number, as far as we know)
        for written in (national, national.replace(" ", "-")):
            assert masks(f"call {written} now") == f"call <phone:{digits}> now", written


def test_every_phone_number_of_a_long_text_is_masked() -> None:
    """Hundreds of numbers among order numbers, dates and ids (each a candidate the matcher
    finds nothing in, more than a masking's budget of second reads): all masked."""
    records, expected = [], []
    for n in range(300):
        gb, us, fr = (
            f"020 7946 {n:04d}",
            f"(415) 555-{n:04d}",
            f"+33 1 23 45 {n // 100:02d} {n % 100:02d}",
        )
        noise = f"order 2024-{n:06d} on 2026-11-21, ref {10_000_000 + n}, id 9f86d0{n:04d}"
        records.append(f"row {n}: {noise}; call {gb} or {us}, else {fr}.")
        expected.append(
            f"row {n}: {noise}; call <phone:0207946{n:04d}> or <phone:415555{n:04d}>,"
            f" else <phone:3312345{n // 100:02d}{n % 100:02d}>."
        )
    assert masks("\n".join(records)) == "\n".join(expected)


@pytest.mark.parametrize(("text", "expected"), URL_ENCODED)
def test_url_encoded_text(text: str, expected: str) -> None:
    assert masks(text) == expected


ALL_CASES = CARDS + SECRET_ASSIGNMENTS + KEYS + IBANS + EMAILS + PHONES + REAL_PHONES + URL_ENCODED


def test_the_tables_hold_near_misses_for_every_detector() -> None:
    """A table of only positives proves nothing about false positives, and the reverse."""
    for table in (CARDS, SECRET_ASSIGNMENTS, KEYS, IBANS, EMAILS, PHONES, URL_ENCODED):
        assert any(text == expected for text, expected in table)
        assert any(text != expected for text, expected in table)


@pytest.mark.parametrize("text", [text for text, _ in ALL_CASES])
def test_masking_again_changes_nothing(text: str) -> None:
    once = mask_text(text)
    assert mask_text(once) == once


def digit_soup(digits: int, separator: str, *, lead: str = "", length: int = 30_000) -> str:
    """Random groups of ``digits`` digits (after ``lead``) between ``separator``s: no phone
    number in it, and a candidate for one everywhere."""
    rng = random.Random(f"{digits}{separator}{lead}")
    groups = (f"{lead}{rng.randrange(10**digits):0{digits}d}" for _ in range(length))
    return separator.join(groups)[:length]


@pytest.mark.parametrize(
    "text",
    [
        "ab" * 15_000 + "%",  # a long run, then what makes a URL-encoded run
        "a" * 30_000 + "@",  # ... an e-mail address
        "1" * 30_000,  # ... a card or phone number
        "Ab1/" * 7_500,  # ... a key
        "a_" * 15_000 + "=x",  # ... an assignment
        "a_" * 15_000 + "tokens=x",  # ... a name that is almost a secret's
        "1." * 15_000,
        "%41" * 10_000,
        'password="' + "x" * 30_000,
        "q=%" + "25" * 15_000 + "40x@example.com",  # encoded 15,000 times over
        "4242 0 " * 1_000,  # a soup of digit groups
        "cookie:" * 4_300,  # a header's name, no cookie after it
        "authorization: a " * 1_800,  # ... a scheme, no credentials after it
        '["token", "' * 3_000,  # ... a pair's name, no value after it
        '("' + "a_" * 15_000 + 'token", "x")',  # ... a long name in a pair
        "DE89 " * 6_000,  # the start of an IBAN, over and over
        "4111\u00a0" * 6_000,  # card groups between no-break spaces, no card
        # What detect-secrets' own patterns read once per start: an OpenAI key's "sk-", an
        # .npmrc line's "//", a JWT's "eyJ" (a refused call's arguments, up to the 256 KB
        # of a request body, are masked too: twice as long, four times the work).
        "sk-" * 10_000,
        "//" * 15_000,
        "eyJ" * 20_000,
        "eyJ=" * 15_000,
        # Soups of digit groups, one long candidate for a phone number (libphonenumber's
        # matcher tried each group and each rest of the run in turn: seconds for 30,000
        # characters, 15 s for a request body's 240 KB of the first).
        digit_soup(1, " - "),
        digit_soup(1, " - ", length=240_000),
        digit_soup(3, ") ("),
    ],
    ids=[
        "percent",
        "at",
        "digits",
        "base64",
        "name",
        "almost",
        "dotted",
        "escapes",
        "quoted",
        "nested",
        "soup",
        "cookies",
        "schemes",
        "pairs",
        "pair-name",
        "ibans",
        "card-groups",
        "openai",
        "npmrc",
        "jwt",
        "jwt-padded",
        "digits-dashed",
        "digits-dashed-request",
        "triples-bracketed",
    ],
)
def test_long_agent_supplied_text_is_masked_in_linear_time(text: str) -> None:
    """Agents choose what is masked: no pattern may read a long run once per character
    (30,000 characters took seconds with one such pattern; linear, milliseconds)."""
    # This thread's CPU, not the clock: a loaded machine (the suite beside a soak) stretches
    # the clock, never the work (seconds of CPU where it was quadratic, milliseconds now).
    # The slowest case takes 0.17 s of CPU on a quiet machine, and CPU time itself grows
    # under heavy load (caches shared with other jobs: 0.52 s seen beside five test runs).
    started = time.thread_time()
    mask_text(text)
    assert time.thread_time() - started < 1.0


def test_the_phone_screen_reads_the_alternate_formats_the_matcher_reads() -> None:
    """The screen before libphonenumber's matcher (``_may_be_grouped_as``) takes the
    alternate formats from the matcher's own private table: a release that renames it
    would leave numbers written in those formats (German ones) unscreened and unmasked,
    while the matcher, reading its new name, would still accept them."""
    from phonenumbers import phonenumbermatcher

    from audit import detectors

    alternates = getattr(phonenumbermatcher, "_ALT_NUMBER_FORMATS", None)
    assert alternates, "phonenumbers moved its alternate formats: update audit/detectors.py"
    german = detectors._groupings("DE")
    assert german is not None
    for number_format in alternates.get(49, ()):
        assert detectors._FORMAT_PATTERN.fullmatch(number_format.pattern)


def test_a_request_body_of_phone_number_soup_is_masked_within_the_payloads_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A soup of digit groups each of which could start a French, German or British number,
    as long as a request body (a refused call's arguments are masked too), in one string and
    in many small ones: libphonenumber's matcher ran once every 8 characters or so, up to a
    millisecond each (29 s of CPU), and numbers were left in clear once a text's second reads
    were spent. Now the payload's matcher runs are bounded, and past them every run that may
    hold a number is masked whole, unread: no number is left."""
    from audit import detectors

    runs = 0
    matcher = detectors.PhoneNumberMatcher

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal runs
        runs += 1
        return matcher(*args, **kwargs)

    monkeypatch.setattr(detectors, "PhoneNumberMatcher", counted)
    separators = (" ", " - ", " / ", ", ", "  ")
    numbers = []
    for n in range(20_000):
        fr = f"0{n % 9 + 1} 23 45 {n // 100 % 100:02d} {n % 100:02d}"
        de, gb = f"030 12{n:05d}", f"020 7946 {n % 10_000:04d}"
        numbers += [fr, de, gb]
    writing = "".join(f"{number}{separators[i % 5]}" for i, number in enumerate(numbers))
    body = settings.API_MAX_BODY_BYTES
    note, lines = writing[: body // 2], [writing[i : i + 40] for i in range(body // 2, body, 40)]

    started = time.thread_time()
    masked = mask_value({"note": note, "lines": lines})
    assert time.thread_time() - started < 10  # 29 s of this thread's CPU before

    assert runs <= detectors.MATCHER_RUNS
    # None of the numbers is left whole in clear (a part of one may be: a run of 20 digits at
    # most is read, the rest of a number then a run of its own, that the matcher may reject).
    shown = "\n".join([masked["note"], *masked["lines"]])
    written = re.compile(r"(?=(0\d 23 45 \d\d \d\d|030 12\d{5}|020 7946 \d{4}))")
    assert written.search(writing)
    assert written.search(shown) is None
