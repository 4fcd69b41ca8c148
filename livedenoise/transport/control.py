"""The control socket: JSON requests on a ZeroMQ REP socket, answered on a thread of its own.

Request: a JSON object ``{"cmd": NAME, ...arguments}``. Reply: ``{"ok": true, ...}`` from
the handler, or ``{"ok": false, "error": "..."}``. Malformed JSON, a non-object, a missing
or unknown ``cmd`` and handler exceptions all get an error reply; the server keeps running
and answers every request exactly once.

Handlers run on the server thread, one request at a time: they must be quick (read a
status, set a flag, queue a job and return its id). Long work belongs to another thread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from livedenoise.transport.security import ServerSecurity, bind_server, check_bind, release_server
from livedenoise.util.jsonutil import json_default

__all__ = ["ControlServer", "Handler"]

log = logging.getLogger("livedenoise")

Handler = Callable[[dict[str, Any]], "dict[str, Any] | None"]
MAX_REQUEST_BYTES = 1 << 20


class ControlServer:
    """A REP socket answering ``{"cmd": ...}`` requests with registered handlers.

    Parameters
    ----------
    endpoint
        Where to bind (default ``tcp://127.0.0.1:5556``; ``tcp://127.0.0.1:*`` picks a free
        port, see :attr:`endpoint`).
    handlers
        ``{name: fn(request) -> dict | None}``; the returned keys are merged into
        ``{"ok": true}``. A handler may return ``{"ok": false, "error": ...}`` itself.
        ``help`` (lists the commands) and ``ping`` are built in.
    security
        CURVE keys (:class:`livedenoise.transport.security.ServerSecurity`); required with
        ``allow_remote=True`` for non-loopback endpoints.
    context
        A ``zmq.Context`` (default: the process-wide instance).
    poll_s
        How often the thread checks for :meth:`close`.

    Raises
    ------
    OSError
        The port is in use (the message names the endpoint and what to do).
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5556",
        handlers: Mapping[str, Handler] | None = None,
        *,
        security: ServerSecurity | None = None,
        context: Any = None,
        poll_s: float = 0.1,
    ) -> None:
        import zmq

        check_bind(endpoint, security)
        self._zmq = zmq
        self._ctx = context if context is not None else zmq.Context.instance()
        self._security = security
        self._poll_ms = max(1, int(poll_s * 1000))
        self._handlers: dict[str, Handler] = {"help": self._help, "ping": lambda req: {"pong": True}}
        for name, fn in (handlers or {}).items():
            self.register(name, fn)
        sock = self._ctx.socket(zmq.REP)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            self.endpoint = bind_server(
                sock, endpoint, security=security, context=self._ctx, option="--control"
            )
        except BaseException:
            sock.close(0)
            raise
        self._sock = sock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.errors = 0

    def register(self, name: str, fn: Handler) -> None:
        """Add or replace the handler of command ``name`` (may be called while running)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"command name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise TypeError(f"handler for {name!r} must be callable, got {type(fn).__name__}")
        self._handlers = {**self._handlers, name: fn}  # swap the dict: the thread never sees it half-built

    def start(self) -> ControlServer:
        """Start answering on a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("ControlServer already started")
        self._thread = threading.Thread(target=self._run, name="livedenoise-control", daemon=True)
        self._thread.start()
        log.info("control socket on %s (commands: %s)", self.endpoint, ", ".join(sorted(self._handlers)))
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread (within about ``poll_s``) and close the socket. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("control thread did not stop within %.1f s", timeout_s)
                return
        elif not self._sock.closed:
            self._sock.close(0)
        if self._security is not None and not getattr(self, "_released", False):
            self._released = True
            release_server(self._ctx)

    def __enter__(self) -> ControlServer:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        zmq = self._zmq
        sock = self._sock
        try:
            while not self._stop.is_set():
                if not sock.poll(self._poll_ms):
                    continue
                try:
                    parts = sock.recv_multipart()
                except zmq.ZMQError as exc:  # e.g. a message over MAXMSGSIZE: the peer is dropped
                    log.warning("control socket receive failed: %s", exc)
                    continue
                reply = self.handle(parts[0] if len(parts) == 1 else None)
                sock.send(reply)
        finally:
            sock.close(0)

    def handle(self, raw: bytes | None) -> bytes:
        """Answer one raw request (the thread's work; public for tests and embedding)."""
        self.requests += 1
        reply = self._dispatch(raw)
        if not reply.get("ok"):
            self.errors += 1
        try:
            return json.dumps(reply, default=json_default).encode("utf-8")
        except (TypeError, ValueError) as exc:
            self.errors += 1
            log.error("control reply is not JSON: %s", exc)
            err = {"ok": False, "error": f"the handler's reply could not be encoded as JSON: {exc}"}
            return json.dumps(err).encode("utf-8")

    def _dispatch(self, raw: bytes | None) -> dict[str, Any]:
        example = 'send one JSON object such as {"cmd": "status"}'
        if raw is None:
            return {"ok": False, "error": f"a request is one message frame; {example}"}
        try:
            request = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return {"ok": False, "error": f"request is not UTF-8 JSON ({exc}); {example}"}
        if not isinstance(request, dict):
            return {
                "ok": False,
                "error": f"request must be a JSON object, got {type(request).__name__}; {example}",
            }
        handlers = self._handlers
        cmd = request.get("cmd")
        if not isinstance(cmd, str) or cmd not in handlers:
            what = 'has no "cmd"' if "cmd" not in request else f"names unknown cmd {cmd!r}"
            return {"ok": False, "error": f"request {what}; known commands: {', '.join(sorted(handlers))}"}
        try:
            result = handlers[cmd](request)
        except Exception as exc:  # the server must survive any handler
            log.exception("control command %r failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {type(exc).__name__}: {exc}"}
        if result is None:
            result = {}
        if not isinstance(result, Mapping):
            return {"ok": False, "error": f"{cmd} handler returned {type(result).__name__}, expected a dict"}
        return {"ok": True, **result}

    def _help(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"commands": sorted(self._handlers)}
