"""Compressed answers for the tests of bounded reading (``core.bounded_http``)."""

from __future__ import annotations

import zlib


def gzip_bomb(size: int) -> bytes:
    """``size`` bytes of "a", gzipped: about a thousandth of that on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"a" * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()
