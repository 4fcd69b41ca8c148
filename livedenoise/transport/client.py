"""Talk to a running daemon's control socket.

>>> from livedenoise.transport.client import request
>>> request("tcp://127.0.0.1:5556", {"cmd": "status"})  # doctest: +SKIP
{'ok': True, 'state': 'running', ...}
"""

from __future__ import annotations

import json
from typing import Any

from livedenoise.transport.security import ClientSecurity, secure_client

__all__ = ["request"]


def request(
    endpoint: str, payload: dict[str, Any], timeout_s: float = 5.0, security: ClientSecurity | None = None
) -> dict[str, Any]:
    """Send one ``{"cmd": ...}`` request and return the reply.

    The reply is returned as is, ``{"ok": false, "error": ...}`` included: check ``reply["ok"]``.

    Parameters
    ----------
    endpoint
        The daemon's control endpoint, e.g. ``tcp://127.0.0.1:5556``.
    payload
        A JSON-serialisable dict with at least ``"cmd"``.
    timeout_s
        How long to wait for the reply.
    security
        CURVE client keys for a protected control socket.

    Raises
    ------
    TimeoutError
        Nothing answered within ``timeout_s``.
    ValueError
        ``payload`` is not a JSON-serialisable dict, or the reply is not a JSON object.
    """
    import zmq

    if not isinstance(payload, dict):
        raise ValueError(f'payload must be a dict such as {{"cmd": "status"}}, got {type(payload).__name__}')
    try:
        data = json.dumps(payload).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"payload is not JSON-serialisable: {exc}") from exc
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if "[" in endpoint:
            sock.setsockopt(zmq.IPV6, 1)
        if security is not None:
            secure_client(sock, security)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise OSError(exc.errno, f"cannot connect to {endpoint}: {exc.strerror}") from None
        sock.send(data)
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(
                f"no livedenoise daemon answered at {endpoint} within {timeout_s:g} s; "
                "is `livedenoise serve` or `livedenoise demo` running?"
            )
        raw = sock.recv()
    finally:
        sock.close(0)
    try:
        reply = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(
            f"{endpoint} answered with something that is not JSON ({exc}); is it a livedenoise daemon?"
        ) from exc
    if not isinstance(reply, dict):
        raise ValueError(f"{endpoint} answered with a JSON {type(reply).__name__}, expected an object")
    return reply
