"""``livedenoise ctl``: drive a running daemon's control socket from the shell."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from livedenoise.cli import CLIError
from livedenoise.cli._args import roi
from livedenoise.live.qc import qc_verdict
from livedenoise.transport.client import request
from livedenoise.transport.security import ClientSecurity

HELP = "talk to a running daemon: status, set-model, set, collect-pairs, job, cancel, stop"
DESCRIPTION = """\
Sends one request to the control socket of a running `livedenoise serve` or `demo`
(default tcp://127.0.0.1:5556) and prints the answer; no ZeroMQ code to write.

Examples:
  livedenoise ctl status
  livedenoise ctl set-model rln-denoise-v1
  livedenoise ctl set --exposure-ms 50 --roi 768,768,512,512 --binning 1
  livedenoise ctl collect-pairs --short-ms 10 --long-ms 100 --pairs 20 -o pairs/ --wait
  livedenoise ctl job job-1 --wait
  livedenoise ctl cancel job-1
  livedenoise ctl stop

Exit status: 0 when the daemon said ok (and a waited-for job is done), 1 when it refused
(its reason is printed), 2 when no daemon answered.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control",
        default="tcp://127.0.0.1:5556",
        help="the daemon's control endpoint (default %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer as it is")
    p.add_argument(
        "--key",
        metavar="NAME.key_secret",
        default=None,
        help="this client's CURVE secret key (for a daemon started with --allow-remote)",
    )
    p.add_argument("--server-key", metavar="server.key", default=None, help="the daemon's public CURVE key")
    sub = p.add_subparsers(dest="ctl_command", metavar="REQUEST", required=True)
    sub.add_parser("status", help="state, frames, drops, fps, latency, model, calibration")
    q = sub.add_parser("set-model", help="switch the model between two frames (validated first)")
    q.add_argument("model", help="model id (`livedenoise models`) or the path of a model file")
    q = sub.add_parser("set", help="change exposure, binning and/or ROI between two frames")
    q.add_argument("--exposure-ms", type=float, default=None, help="camera exposure, ms")
    q.add_argument("--binning", type=int, default=None, help="camera binning (1, 2, 4...)")
    q.add_argument("--roi", type=roi, metavar="X,Y,W,H", default=None, help="ROI in binned pixels")
    q = sub.add_parser("collect-pairs", help="start a paired short/long acquisition job")
    q.add_argument("--short-ms", type=float, required=True, help="short exposure, ms")
    q.add_argument("--long-ms", type=float, required=True, help="long exposure, ms")
    q.add_argument("--pairs", type=int, required=True, help="number of pairs")
    q.add_argument("-o", "--output", required=True, help="dataset folder (as the daemon sees paths)")
    q.add_argument("--shorts-per-pair", type=int, default=None, help="short exposures per pair")
    q.add_argument("--positions", default=None, help="'current', 'grid NxM STEP_UM' or 'list FILE'")
    q.add_argument("--wait", action="store_true", help="wait for the job to finish, printing its progress")
    q = sub.add_parser("job", help="a job's state and progress")
    q.add_argument("id", help="the job id collect-pairs answered with (e.g. job-1)")
    q.add_argument("--wait", action="store_true", help="wait for the job to finish, printing its progress")
    q = sub.add_parser("cancel", help="cancel a job (a collection keeps its complete pairs)")
    q.add_argument("id", help="the job id")
    sub.add_parser("stop", help="stop the daemon (frames already acquired are still restored)")


def _request(
    args: argparse.Namespace, payload: dict[str, Any], timeout_s: float | None = None
) -> dict[str, Any]:
    if (args.key is None) != (args.server_key is None):
        raise CLIError(
            "--key and --server-key go together (this client's secret key and the daemon's public key)"
        )
    security = ClientSecurity(args.key, args.server_key) if args.key else None
    return request(args.control, payload, timeout_s=timeout_s or args.timeout, security=security)


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    cmd = args.ctl_command
    if cmd == "set-model":
        return {"cmd": "set_model", "model": args.model}
    if cmd == "set":
        payload: dict[str, Any] = {"cmd": "set"}
        if args.exposure_ms is not None:
            payload["exposure_ms"] = args.exposure_ms
        if args.binning is not None:
            payload["binning"] = args.binning
        if args.roi is not None:
            payload["roi"] = list(args.roi)
        if len(payload) == 1:
            raise CLIError("ctl set needs at least one of --exposure-ms, --binning, --roi")
        return payload
    if cmd == "collect-pairs":
        payload = {
            "cmd": "collect_pairs",
            "short_ms": args.short_ms,
            "long_ms": args.long_ms,
            "pairs": args.pairs,
            "output": args.output,
        }
        if args.shorts_per_pair is not None:
            payload["shorts_per_pair"] = args.shorts_per_pair
        if args.positions is not None:
            payload["positions"] = args.positions
        return payload
    if cmd in ("job", "cancel"):
        return {"cmd": cmd, "id": args.id}
    return {"cmd": cmd}


def format_status(st: dict[str, Any]) -> str:
    """A few readable lines from a ``status`` answer."""
    frames, fps, lat = st.get("frames", {}), st.get("fps", {}), st.get("latency_ms", {})
    e2e = lat.get("end_to_end", {})
    engine = st.get("engine") or {}
    cal = st.get("calibration") or {}
    drops = st.get("drops") or {}
    lines = [
        f"state: {st.get('state')}" + (f" ({st['failure']})" if st.get("failure") else ""),
        f"camera: {st.get('camera')}  ROI [x, y, w, h, binning]: {st.get('roi')}",
        f"engine: {engine.get('backend')}: {st.get('model')}"
        + (f" ({engine['precision']})" if engine.get("precision") else ""),
        f"calibration: {cal.get('id')} ({cal.get('source') or cal.get('path')})",
        "frames: acquired {a}, restored {r}, published {p}, pending {q}".format(
            a=frames.get("acquired"),
            r=frames.get("restored"),
            p=frames.get("published"),
            q=frames.get("pending"),
        ),
        f"dropped: {st.get('dropped')}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in drops.items()) + ")" if drops else ""),
        f"fps: acquired {fps.get('acquired')}, restored {fps.get('restored')}",
        f"latency end to end: p50 {e2e.get('p50')} ms, p99 {e2e.get('p99')} ms",
        "endpoints: " + ", ".join(f"{k} {v}" for k, v in (st.get("endpoints") or {}).items()),
    ]
    qc = st.get("qc") or {}
    if qc.get("frames"):
        lines.append(
            f"trust score: {100 * qc['ok_fraction']:.0f}% of {qc['frames']} restored frames ok, "
            f"mean chi2 {qc['chi2_mean']}; last frame: {qc_verdict(qc.get('last'))}"
        )
    return "\n".join(lines)


def _wait_job(args: argparse.Namespace, job_id: str) -> dict[str, Any]:
    last = None
    while True:
        reply = _request(args, {"cmd": "job", "id": job_id})
        if not reply.get("ok"):
            return reply
        shown = (reply.get("state"), json.dumps(reply.get("progress"), sort_keys=True))
        if shown != last and not args.json:
            print(f"{job_id}: {reply.get('state')} {reply.get('progress') or ''}".rstrip(), flush=True)
            last = shown
        if reply.get("state") in ("done", "failed"):
            return reply
        time.sleep(0.5)


def run(args: argparse.Namespace) -> int:
    cmd = args.ctl_command
    payload = _payload(args)
    # set-model prepares and validates the new engine before answering: give it time
    timeout = max(args.timeout, 120.0) if cmd == "set-model" else args.timeout
    reply = _request(args, payload, timeout)
    if reply.get("ok") and getattr(args, "wait", False):
        reply = _wait_job(args, reply["id"] if cmd == "collect-pairs" else args.id)
    if args.json:
        print(json.dumps(reply, indent=2))
    if not reply.get("ok"):
        print(f"livedenoise ctl {cmd}: the daemon refused: {reply.get('error')}", file=sys.stderr)
        return 1
    if not args.json:
        print(_summary(cmd, reply))
    if reply.get("state") == "failed":
        return 1
    return 0


def _summary(cmd: str, reply: dict[str, Any]) -> str:
    if cmd == "status":
        return format_status(reply)
    if cmd == "set-model":
        engine = reply.get("engine") or {}
        note = "" if engine.get("in_use", True) else f" ({engine.get('note')})"
        return f"model {reply.get('model')} on {engine.get('backend')} ({engine.get('precision')}){note}"
    if cmd == "set":
        return f"camera ROI {reply.get('roi')} (x, y, w, h, binning), exposure {reply.get('exposure_ms')} ms"
    if cmd in ("collect-pairs", "job", "cancel"):
        line = f"{reply.get('id')}: {reply.get('state')}"
        if reply.get("error"):
            line += f": {reply['error']}"
        elif reply.get("result"):
            line += f": {json.dumps(reply['result'])}"
        elif reply.get("progress"):
            line += f" {reply['progress']}"
        return line
    if cmd == "stop":
        return "the daemon is stopping"
    return json.dumps(reply)
