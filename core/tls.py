"""One TLS context per process for every outgoing HTTPS request (upstreams, webhooks, the
sandbox's payments API).

An httpx client made without one builds its own, loading the CA certificates from disk
each time: under ``make soak`` that was about a third of a worker's CPU, for every call
to an upstream. The context is httpx's default (certifi's CAs, or ``SSL_CERT_FILE`` /
``SSL_CERT_DIR``), made once; an ``ssl.SSLContext`` may be shared between threads.
"""

from __future__ import annotations

import ssl
from functools import cache

import httpx


@cache
def context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
