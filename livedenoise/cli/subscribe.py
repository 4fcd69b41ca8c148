"""``livedenoise subscribe``: watch (and optionally record) a livedenoise stream."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from livedenoise.app.recording import StackRecorder, output_paths
from livedenoise.cli import CLIError
from livedenoise.live.qc import qc_verdict
from livedenoise.transport.protocol import TOPICS
from livedenoise.transport.security import ClientSecurity
from livedenoise.transport.subscriber import Subscriber, keep_freed_memory

HELP = "receive the live stream: per-topic fps, seq gaps, latency; --save records a TIFF"
DESCRIPTION = """\
Connect to a livedenoise publisher (the `demo` or `serve` command) and print, once a
second and per topic, the frames per second, the frames received, transport gaps (missing
`seq` numbers: this subscriber was too slow), latency from acquisition to arrival
(p50/p99 ms) and the daemon's own count of frames it could not restore (`dropped`).

  livedenoise subscribe --topics raw,denoised --seconds 10
  livedenoise subscribe --save run1.tif --count 200      # 200 denoised frames, float32 e-
  livedenoise subscribe --save raw.tif --save-topic raw  # uint16 ADU

A recording is an OME-TIFF time series (BigTIFF): `tifffile.imread` returns the whole
(T, Y, X) stack, Fiji and napari open it as a time series, and every frame's header (frame,
t_acquired, exposure_ms, model, calibration, qc, ...) is kept in its OME-XML metadata
(`livedenoise.app.recording.read_recording` reads it back). Frames stream to a hidden
`.OUT.tif.PID.part` file, renamed into place when the recording ends. Ctrl-C or SIGTERM
ends it cleanly, with a valid file marked `complete: false`; an error leaves no file; the
`.part` files of a killed recording are removed, with a warning, by the next one.

  livedenoise subscribe --save run.tif --save-topic raw,denoised --count 100
      # run.raw.tif (uint16 ADU) and run.denoised.tif (float32 e-), 100 frames each
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint", default="tcp://127.0.0.1:5555", help="publisher endpoint (default %(default)s)"
    )
    p.add_argument(
        "--topics", default="raw,denoised", help="comma-separated: raw, denoised, truth (default %(default)s)"
    )
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument(
        "--count", type=int, default=None, help="stop after this many messages (with --save: frames recorded)"
    )
    p.add_argument(
        "--save", metavar="OUT.tif", default=None, help="record as an OME-TIFF time series (see above)"
    )
    p.add_argument(
        "--save-topic",
        default="denoised",
        help="topic(s) recorded by --save, comma-separated; several give one file each, "
        "OUT.TOPIC.tif (default %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace existing recordings")
    p.add_argument(
        "--pixel-size-um",
        type=float,
        default=None,
        help="pixel size in the sample, written into the recording (default: from the headers, if any)",
    )
    p.add_argument("--json", action="store_true", help="print the per-second statistics as JSON lines")
    p.add_argument(
        "--key",
        metavar="NAME.key_secret",
        default=None,
        help="this viewer's CURVE secret key (for a publisher bound with --allow-remote)",
    )
    p.add_argument(
        "--server-key", metavar="server.key", default=None, help="the publisher's public CURVE key"
    )


def run(args: argparse.Namespace) -> int:

    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    bad = [t for t in topics if t not in TOPICS]
    if bad or not topics:
        raise CLIError(f"--topics takes some of {','.join(TOPICS)}, got {args.topics!r}")
    save_topics = [t.strip() for t in args.save_topic.split(",") if t.strip()]
    if args.save and (not save_topics or any(t not in TOPICS for t in save_topics)):
        raise CLIError(f"--save-topic must be some of {', '.join(TOPICS)}, got {args.save_topic!r}")
    if args.save:
        topics += [t for t in save_topics if t not in topics]
    for name in ("seconds", "count", "pixel_size_um"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            raise CLIError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if (args.key is None) != (args.server_key is None):
        raise CLIError(
            "--key and --server-key go together (this viewer's secret key and the publisher's public key)"
        )
    security = None
    if args.key:
        security = ClientSecurity(args.key, args.server_key)

    keep_freed_memory()  # libzmq's receive buffers are reused instead of mapped afresh per frame
    with Subscriber(args.endpoint, topics, security=security) as sub:
        if not args.save:
            return _finish(sub, args, _loop(sub, args, None))

        paths = output_paths(args.save, save_topics)
        for path in paths.values():  # refuse before anything is recorded
            if path.exists() and not args.force:
                raise CLIError(f"{path} exists; choose another --save name or pass --force to replace it")
        recorders: dict[str, Any] = {}
        try:
            for topic, path in paths.items():
                recorders[topic] = StackRecorder(
                    path, topic, force=args.force, pixel_size_um=args.pixel_size_um
                )
            result = _loop(sub, args, recorders)
        except BaseException:
            for rec in recorders.values():
                rec.abort()
            raise
        complete = not result["interrupted"]
        stopped_by = result["stopped_by"]
        nothing = True
        for topic, rec in recorders.items():
            written = rec.close(complete=complete, stopped_by=stopped_by)
            if written is None:
                print(
                    f"nothing recorded: no {topic} frame arrived; {rec.path} was not written", file=sys.stderr
                )
                continue
            nothing = False
            mark = "" if complete else f" (stopped by {stopped_by}: marked incomplete)"
            print(f"recorded {rec.frames} {topic} frames to {written}{mark}", file=sys.stderr)
        rc = _finish(sub, args, result)
        return 1 if nothing else rc


def _loop(sub: Any, args: argparse.Namespace, recorders: dict[str, Any] | None) -> dict[str, Any]:
    """Receive until --seconds, --count, Ctrl-C or SIGTERM; print statistics once a second.

    The signals only set a flag (checked at least every 0.25 s), so they never land in the
    middle of writing a TIFF page.
    """
    import signal
    import threading

    stop = threading.Event()
    caught: list[str] = []
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        caught.append(signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        result = _receive(sub, args, recorders, stop)
    finally:
        for signum, prev in previous.items():
            signal.signal(signum, prev)
    if caught:
        result["stopped_by"] = caught[0]
    return result


def _receive(
    sub: Any, args: argparse.Namespace, recorders: dict[str, Any] | None, stop: Any
) -> dict[str, Any]:
    start = time.monotonic()
    deadline = start + args.seconds if args.seconds else math.inf
    next_report = start + 1.0
    received = saved = 0
    hinted = interrupted = False
    stopped_by = "seconds" if args.seconds else "end"
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                stopped_by = "seconds"
                break
            msg = sub.recv(max(0.0, min(next_report, deadline, now + 0.25) - now))
            if msg is not None:
                received += 1
                rec = recorders.get(msg.topic) if recorders else None
                if rec is not None and rec.write(msg.header, msg.array):
                    saved = min(r.frames for r in recorders.values())  # type: ignore[union-attr]
                if args.count and (saved if recorders else received) >= args.count:
                    stopped_by = "count"
                    break
            if time.monotonic() >= next_report:
                next_report += 1.0
                _report(sub, args)
                if received == 0 and not hinted and time.monotonic() - start > 2.5:
                    hinted = True
                    print(
                        f"nothing from {args.endpoint} yet; is `livedenoise demo` or `livedenoise serve` "
                        "running there?",
                        file=sys.stderr,
                    )
    except KeyboardInterrupt:  # raised outside our handler (e.g. not the main thread)
        interrupted = True
        stopped_by = "SIGINT"
    interrupted = interrupted or stop.is_set()
    return {
        "received": received,
        "saved": saved,
        "interrupted": interrupted,
        "stopped_by": stopped_by,
        "seconds": time.monotonic() - start,
    }


def _report(sub: Any, args: argparse.Namespace) -> None:
    summary = sub.summary()
    if args.json:
        print(json.dumps({"t": time.time(), "topics": summary}), flush=True)
        return
    for topic, s in summary.items():
        p50, p99 = (f"{v:.1f}" if v is not None else "-" for v in (s["latency_p50_ms"], s["latency_p99_ms"]))
        print(
            f"{topic:9s} {s['fps']:7.1f} fps  frames {s['frames']:7d}  gaps {s['gaps']:5d}  "
            f"latency p50 {p50} ms p99 {p99} ms  dropped {s['dropped']}" + _qc_text(s.get("qc")),
            flush=True,
        )


def _finish(sub: Any, args: argparse.Namespace, result: dict[str, Any]) -> int:
    summary = sub.summary()
    final = {"summary": summary, **result, "malformed": sub.malformed}
    if args.json:  # the final summary for scripts on stdout; people read stderr
        print(json.dumps(final), flush=True)
    how = "interrupted" if result["interrupted"] else "done"
    print(f"{how} after {result['seconds']:.1f} s: {result['received']} messages", file=sys.stderr)
    for topic, s in summary.items():
        print(
            f"  {topic}: {s['frames']} frames, seq {s['first_seq']}..{s['last_seq']}, gaps {s['gaps']}, "
            f"latency p50 {s['latency_p50_ms']} ms p99 {s['latency_p99_ms']} ms, dropped {s['dropped']}"
            + _qc_text(s.get("qc"), final=True),
            file=sys.stderr,
        )
    if result["received"] == 0:
        print(
            f"no message arrived from {args.endpoint}; is `livedenoise demo` or `livedenoise serve` running?",
            file=sys.stderr,
        )
        return 1
    return 0


def _qc_text(qc: dict[str, Any] | None, *, final: bool = False) -> str:
    """The trust score of the restored frames (``qc`` headers), for people; empty without one."""
    if not qc:
        return ""
    share = f"{100 * qc['ok_fraction']:.0f}% of {qc['frames']} frames ok, mean chi2 {qc['chi2_mean']}"
    return f", trust score: {share}; last frame: {qc_verdict(qc['last'])}" if final else f"  qc {share}"
