"""Identifiers made on the hot path.

``str(uuid.uuid4())`` builds a ``UUID`` object (its ``__init__`` checks and converts in Python)
only to print it: ~3.6 us on the development VM, against ~1.4 us for the same 16 random bytes
written in the same form here (figures in bench/README.md). Once per operation, for its id
(its callback's message id is ``secrets.token_hex``: the same bytes, no UUID form).
"""

from __future__ import annotations

import os

_VARIANT = "89ab"  # RFC 9562 variant bits 10xx: the first hex digit of the fourth group


def uuid4_text() -> str:
    """A random (version 4) UUID in its canonical text form, as ``str(uuid.uuid4())``."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
