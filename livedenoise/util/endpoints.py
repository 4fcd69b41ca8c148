"""The one loopback rule: which ZeroMQ endpoints only this machine can reach."""

from __future__ import annotations

import re

__all__ = ["is_loopback"]

_LOOPBACK = re.compile(r"^tcp://(127(\.\d{1,3}){3}|localhost|\[::1\]|::1)(:(\d+|\*))?$", re.IGNORECASE)


def is_loopback(endpoint: str) -> bool:
    """True for endpoints only this machine can reach (loopback tcp, ``ipc://``, ``inproc://``)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    return bool(_LOOPBACK.match(endpoint.strip()))
