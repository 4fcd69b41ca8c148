"""ControlServer and client.request over real loopback sockets."""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Iterator

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")

from livedenoise.transport.client import request
from livedenoise.transport.control import MAX_REQUEST_BYTES, ControlServer
from livedenoise.transport.security import ClientSecurity, ServerSecurity, create_client_keys


@pytest.fixture
def server() -> Iterator[ControlServer]:
    state = {"frames": 0}

    def status(req: dict) -> dict:
        state["frames"] += 1
        return {
            "state": "running",
            "frames": np.int64(state["frames"]),
            "fps": np.float32(99.5),
            "latency_ms": np.array([1.5, 3.0]),
        }

    def boom(req: dict) -> dict:
        raise RuntimeError("camera unplugged")

    srv = ControlServer("tcp://127.0.0.1:*", {"status": status, "boom": boom}).start()
    yield srv
    t = time.monotonic()
    srv.close()
    assert time.monotonic() - t < 2.0, "close() must return promptly"


def _raw(endpoint: str, payload: bytes | list[bytes], timeout_s: float = 5.0) -> dict:
    """Send raw bytes (possibly not JSON) through a REQ socket; return the decoded reply."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart(payload if isinstance(payload, list) else [payload])
        assert sock.poll(int(timeout_s * 1000)), "no reply"
        return json.loads(sock.recv())
    finally:
        sock.close(0)


def test_status_like_handler_with_numpy_values(server: ControlServer) -> None:
    reply = request(server.endpoint, {"cmd": "status"})
    assert reply == {"ok": True, "state": "running", "frames": 1, "fps": 99.5, "latency_ms": [1.5, 3.0]}
    assert request(server.endpoint, {"cmd": "status"})["frames"] == 2


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'"status"', "must be a JSON object, got str"),
        (b'{"command": "status"}', 'has no "cmd"'),
        (b'{"cmd": "launch"}', "unknown cmd 'launch'; known commands: boom, help, ping, status"),
        (b'{"cmd": 3}', "unknown cmd 3"),
        ([b'{"cmd": "status"}', b"extra"], "one message frame"),
    ],
)
def test_bad_requests_get_an_error_reply_and_the_server_goes_on(server, payload, match) -> None:
    reply = _raw(server.endpoint, payload)
    assert reply["ok"] is False and match in reply["error"]
    assert request(server.endpoint, {"cmd": "status"})["ok"] is True


def test_handler_exception_is_an_error_reply(server: ControlServer) -> None:
    reply = request(server.endpoint, {"cmd": "boom"})
    assert reply == {"ok": False, "error": "boom failed: RuntimeError: camera unplugged"}
    assert request(server.endpoint, {"cmd": "ping"}) == {"ok": True, "pong": True}
    assert server.errors == 1


def test_register_while_running_and_bad_handler_results(server: ControlServer) -> None:
    server.register("stop", lambda req: {"stopping": True, "echo": req.get("why")})
    server.register("nothing", lambda req: None)
    server.register("weird", lambda req: 42)
    server.register("unencodable", lambda req: {"obj": object()})
    server.register("refuse", lambda req: {"ok": False, "error": "busy; try again"})
    assert request(server.endpoint, {"cmd": "stop", "why": "test"}) == {
        "ok": True,
        "stopping": True,
        "echo": "test",
    }
    assert request(server.endpoint, {"cmd": "nothing"}) == {"ok": True}
    assert "returned int, expected a dict" in request(server.endpoint, {"cmd": "weird"})["error"]
    assert "could not be encoded as JSON" in request(server.endpoint, {"cmd": "unencodable"})["error"]
    assert request(server.endpoint, {"cmd": "refuse"}) == {"ok": False, "error": "busy; try again"}
    assert "stop" in request(server.endpoint, {"cmd": "help"})["commands"]
    with pytest.raises(TypeError, match="must be callable"):
        server.register("x", "not a function")  # type: ignore[arg-type]


def test_port_in_use_names_the_endpoint(server: ControlServer) -> None:
    with pytest.raises(OSError, match="already in use") as info:
        ControlServer(server.endpoint)
    assert info.value.errno == errno.EADDRINUSE
    assert server.endpoint in str(info.value) and "--control" in str(info.value)


def test_request_times_out_with_a_hint() -> None:
    srv = ControlServer("tcp://127.0.0.1:*")  # bound but never started: nobody answers
    try:
        t = time.monotonic()
        with pytest.raises(
            TimeoutError, match="no livedenoise daemon answered at tcp://127.0.0.1:.* within 0.3 s"
        ):
            request(srv.endpoint, {"cmd": "status"}, timeout_s=0.3)
        assert time.monotonic() - t < 10.0  # the timeout, not a hang (slack for a loaded machine)
    finally:
        srv.close()


def test_request_rejects_a_bad_payload() -> None:
    with pytest.raises(ValueError, match="must be a dict"):
        request("tcp://127.0.0.1:1", ["status"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        request("tcp://127.0.0.1:1", {"cmd": object()})


def test_curve_control_socket(tmp_path) -> None:
    keys = tmp_path / "keys"
    _, secret = create_client_keys(tmp_path / "me", "me", authorize_in=keys)
    _, stranger = create_client_keys(tmp_path / "them", "them")
    srv = ControlServer(
        "tcp://127.0.0.1:*", {"status": lambda r: {"state": "idle"}}, security=ServerSecurity(keys)
    )
    srv.start()
    try:
        good = ClientSecurity(secret, keys / "server.key")
        # an authorised client is answered (the CURVE handshake and the key check may take a while
        # on a loaded machine: wait for the answer, not for a quiet machine)
        assert request(srv.endpoint, {"cmd": "status"}, timeout_s=60, security=good) == {
            "ok": True,
            "state": "idle",
        }
        with pytest.raises(TimeoutError):
            request(
                srv.endpoint,
                {"cmd": "status"},
                timeout_s=0.5,
                security=ClientSecurity(stranger, keys / "server.key"),
            )
        with pytest.raises(TimeoutError):
            request(srv.endpoint, {"cmd": "status"}, timeout_s=0.5)
        assert request(srv.endpoint, {"cmd": "status"}, timeout_s=60, security=good)["ok"] is True
    finally:
        srv.close()


@pytest.mark.parametrize(
    "payload",
    [
        b'{"cmd": ' + b"[" * 1000 + b"]" * 1000 + b"}",  # the probe's ~2 KB, 1000 levels
        b"[" * 100_000 + b"]" * 100_000,
        b'{"cmd": "status", "x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    ],
    ids=["cmd-1000-deep", "array-100k-deep", "argument-5000-deep"],
)
def test_deeply_nested_json_gets_a_reply_and_the_loop_survives(server, payload) -> None:
    reply = _raw(server.endpoint, payload)
    assert isinstance(reply, dict) and "ok" in reply
    if reply["ok"] is False:
        assert len(reply["error"]) < 500
    # the control thread is alive: status and a handler that echoes nothing still answer
    assert request(server.endpoint, {"cmd": "status"})["ok"] is True
    assert request(server.endpoint, {"cmd": "ping"}) == {"ok": True, "pong": True}


def test_a_handler_that_recurses_forever_gets_an_error_reply(server: ControlServer) -> None:
    def deep(req: dict) -> dict:
        return deep(req)

    server.register("deep", deep)
    reply = request(server.endpoint, {"cmd": "deep"})
    assert reply["ok"] is False and "RecursionError" in reply["error"]
    assert request(server.endpoint, {"cmd": "status"})["ok"] is True


@pytest.mark.parametrize("size", [MAX_REQUEST_BYTES + 1, 8 * MAX_REQUEST_BYTES])
def test_an_over_size_request_gets_an_error_naming_the_limit(server, size) -> None:
    head = b'{"cmd": "status", "pad": "'
    payload = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(payload) == size
    reply = _raw(server.endpoint, payload)
    assert reply["ok"] is False
    assert (
        f"{size} bytes" in reply["error"] and f"at most {MAX_REQUEST_BYTES} bytes (1 MiB)" in reply["error"]
    )
    assert len(reply["error"]) < 300  # the request is not echoed
    # a request at the limit is answered normally
    ok = head + b"x" * (MAX_REQUEST_BYTES - len(head) - 2) + b'"}'
    assert _raw(server.endpoint, ok)["ok"] is True
    assert request(server.endpoint, {"cmd": "status"})["ok"] is True


def test_a_huge_unknown_cmd_is_not_echoed(server: ControlServer) -> None:
    reply = request(server.endpoint, {"cmd": "x" * 500_000})
    assert reply["ok"] is False and "unknown cmd" in reply["error"] and len(reply["error"]) < 500
    reply = request(server.endpoint, {"cmd": {"a": ["b"] * 1000}})
    assert reply["ok"] is False and "unknown cmd (a JSON object)" in reply["error"]


def test_one_unreadable_authorised_key_does_not_lock_out_the_others(tmp_path, caplog) -> None:
    keys = tmp_path / "keys"
    _, secret = create_client_keys(tmp_path / "me", "me", authorize_in=keys)
    (keys / "authorized" / "garbage.key").write_bytes(b"\xff\xfe not a certificate\n")
    (keys / "authorized" / "folder.key").mkdir()  # unreadable as a file
    unreadable = keys / "authorized" / "private.key"
    unreadable.write_text('public-key = "x"\n')
    unreadable.chmod(0)
    srv = ControlServer(
        "tcp://127.0.0.1:*", {"status": lambda r: {"state": "idle"}}, security=ServerSecurity(keys)
    ).start()
    try:
        with caplog.at_level("WARNING", logger="livedenoise"):
            good = ClientSecurity(secret, keys / "server.key")
            assert request(srv.endpoint, {"cmd": "status"}, security=good) == {"ok": True, "state": "idle"}
            assert request(srv.endpoint, {"cmd": "status"}, security=good)["ok"] is True
        skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
        assert any("garbage.key" in m for m in skipped) and any("folder.key" in m for m in skipped)
        assert len(skipped) == len(set(skipped))  # warned once per file, not at every connection
    finally:
        unreadable.chmod(0o600)
        srv.close()
