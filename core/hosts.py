"""Whether a host, or a URL's, stays on this machine: read one way wherever it decides
something (keys and sign-in over plain http, the deploy check of PUBLIC_URL). Standard
library only, so that the settings can use it before Django starts."""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, urlsplit


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def https_or_here(url: str) -> bool:
    """Whether ``url`` is https, or plain http to this machine only: nothing on the way can
    read or change what goes over it."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or ""))


def host_and_port(parts: SplitResult) -> str:
    """Where a split URL's requests go, as written (``host:port``): its netloc without the
    user and password that may come before it, which are credentials, never a place."""
    return parts.netloc.rpartition("@")[2]
