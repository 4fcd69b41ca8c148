"""The control socket: JSON requests on a ZeroMQ REP socket, answered on a thread of its own.

Request: a JSON object ``{"cmd": NAME, ...arguments}``. Reply: ``{"ok": true, ...}`` from
the handler, or ``{"ok": false, "error": "..."}``. Malformed JSON, a non-object, a missing
or unknown ``cmd``, JSON nested too deeply to parse and handler exceptions all get an error
reply; the server keeps running and answers every request exactly once, whatever it holds.

Size limit: a request is at most :data:`MAX_REQUEST_BYTES` (1 MiB, 1048576 bytes) of UTF-8
JSON in one message frame. A larger request is still received and answered, with an error
reply that names the limit (it is never silently dropped, so a client without a timeout
does not hang).

Paths in requests are confined to folders the operator names when starting the daemon
(``livedenoise serve`` / ``demo``):

- ``collect_pairs`` ``output`` (and a ``positions: "list FILE"`` file) resolve inside
  ``--data-dir DIR``; without ``--data-dir`` the daemon collects no pairs over the control
  socket. Relative paths are taken inside the folder; absolute paths, ``..`` and symbolic
  links that lead outside it are refused, as are NUL bytes and other invalid paths, at
  request time.
- ``set_model`` loads a model by id from the shipped models, the ``$LIVEDENOISE_MODELS``
  folders and the folders named with ``--model-dir DIR`` (repeatable), or by a file path
  inside those folders. A path outside them is refused without looking at it, so the
  reply never tells whether a file exists there.

Error replies never echo the contents of files.

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

__all__ = ["MAX_REQUEST_BYTES", "ControlServer", "Handler"]

log = logging.getLogger("livedenoise")

Handler = Callable[[dict[str, Any]], "dict[str, Any] | None"]
MAX_REQUEST_BYTES = 1 << 20
"""Largest request answered normally (1 MiB); a larger one gets an error reply naming this limit."""


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
            # no MAXMSGSIZE: ZeroMQ would drop the peer without a reply; the size is checked here
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
                    parts = sock.recv_multipart(copy=False)
                except zmq.ZMQError as exc:
                    log.warning("control socket receive failed: %s", exc)
                    continue
                try:
                    reply = self.handle_parts([p.buffer for p in parts])
                except Exception as exc:  # never leave a request unanswered (REP needs a reply)
                    log.exception("control request could not be answered")
                    reply = _encode({"ok": False, "error": f"internal error: {type(exc).__name__}"})
                try:
                    sock.send(reply)
                except zmq.ZMQError as exc:  # the peer went away; the next request is answered
                    log.warning("control reply could not be sent: %s", exc)
        finally:
            sock.close(0)

    def handle_parts(self, parts: list[Any]) -> bytes:
        """Answer one request given as its message frames (bytes-like); see :meth:`handle`."""
        size = sum(len(memoryview(p)) for p in parts)
        if size > MAX_REQUEST_BYTES:
            self.requests += 1
            self.errors += 1
            return _encode(
                {
                    "ok": False,
                    "error": f"request is {size} bytes; the control socket accepts requests of at most "
                    f"{MAX_REQUEST_BYTES} bytes (1 MiB): send a smaller JSON object",
                }
            )
        return self.handle(bytes(parts[0]) if len(parts) == 1 else None)

    def handle(self, raw: bytes | None) -> bytes:
        """Answer one raw request (the thread's work; public for tests and embedding)."""
        self.requests += 1
        try:
            reply = self._dispatch(raw)
        except Exception as exc:  # e.g. RecursionError or MemoryError outside a handler
            log.exception("control request failed")
            reply = {"ok": False, "error": f"request could not be handled: {type(exc).__name__}: {exc}"}
        if not reply.get("ok"):
            self.errors += 1
        try:
            return json.dumps(reply, default=json_default).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            self.errors += 1
            log.error("control reply is not JSON: %s", exc)
            err = {"ok": False, "error": f"the handler's reply could not be encoded as JSON: {exc}"}
            return _encode(err)

    def _dispatch(self, raw: bytes | None) -> dict[str, Any]:
        example = 'send one JSON object such as {"cmd": "status"}'
        if raw is None:
            return {"ok": False, "error": f"a request is one message frame; {example}"}
        if len(raw) > MAX_REQUEST_BYTES:
            return {
                "ok": False,
                "error": f"request is {len(raw)} bytes; the control socket accepts requests of at most "
                f"{MAX_REQUEST_BYTES} bytes (1 MiB): send a smaller JSON object",
            }
        try:
            request = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return {"ok": False, "error": f"request is not UTF-8 JSON ({exc}); {example}"}
        except RecursionError:
            return {"ok": False, "error": f"request is JSON nested too deeply to parse; {example}"}
        if not isinstance(request, dict):
            return {
                "ok": False,
                "error": f"request must be a JSON object, got {type(request).__name__}; {example}",
            }
        handlers = self._handlers
        cmd = request.get("cmd")
        if not isinstance(cmd, str) or cmd not in handlers:
            if "cmd" not in request:
                what = 'has no "cmd"'
            elif isinstance(cmd, (dict, list)):  # never echo a (possibly huge or deep) structure
                what = f"names unknown cmd (a JSON {'object' if isinstance(cmd, dict) else 'array'})"
            else:
                what = f"names unknown cmd {_short(repr(cmd), 100)}"
            return {"ok": False, "error": f"request {what}; known commands: {', '.join(sorted(handlers))}"}
        try:
            result = handlers[cmd](request)
        except Exception as exc:  # the server must survive any handler
            log.exception("control command %r failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {type(exc).__name__}: {_short(str(exc))}"}
        if result is None:
            result = {}
        if not isinstance(result, Mapping):
            return {"ok": False, "error": f"{cmd} handler returned {type(result).__name__}, expected a dict"}
        return {"ok": True, **result}

    def _help(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"commands": sorted(self._handlers)}


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply).encode("utf-8")


def _short(text: str, limit: int = 2000) -> str:
    """An error text of bounded length (an exception may quote a huge request value)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
