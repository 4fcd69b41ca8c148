"""``livedenoise subscribe``: watch (and optionally record) a livedenoise stream."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from livedenoise.cli import CLIError
from livedenoise.transport.protocol import TOPICS
from livedenoise.transport.security import ClientSecurity
from livedenoise.transport.subscriber import Subscriber, keep_freed_memory
from livedenoise.util.atomic import atomic_path

HELP = "receive the live stream: per-topic fps, seq gaps, latency; --save records a TIFF"
DESCRIPTION = """\
Connect to a livedenoise publisher (the `demo` or `serve` command) and print, once a
second and per topic, the frames per second, the frames received, transport gaps (missing
`seq` numbers: this subscriber was too slow), latency from acquisition to arrival
(p50/p99 ms) and the daemon's own count of frames it could not restore (`dropped`).

  livedenoise subscribe --topics raw,denoised --seconds 10
  livedenoise subscribe --save run1.tif --count 200      # 200 denoised frames, float32 e-
  livedenoise subscribe --save raw.tif --save-topic raw  # uint16 ADU

A recording is one TIFF page per frame with that frame's JSON header as its
ImageDescription (BigTIFF). It is written to a temporary file and renamed when complete:
Ctrl-C ends the recording cleanly; a crash leaves no partial file.
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
    p.add_argument("--save", metavar="OUT.tif", default=None, help="record one topic as a TIFF stack")
    p.add_argument("--save-topic", default="denoised", help="topic recorded by --save (default %(default)s)")
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


class _NothingRecorded(Exception):
    pass


def run(args: argparse.Namespace) -> int:

    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    bad = [t for t in topics if t not in TOPICS]
    if bad or not topics:
        raise CLIError(f"--topics takes some of {','.join(TOPICS)}, got {args.topics!r}")
    if args.save and args.save_topic not in TOPICS:
        raise CLIError(f"--save-topic must be one of {', '.join(TOPICS)}, got {args.save_topic!r}")
    if args.save and args.save_topic not in topics:
        topics.append(args.save_topic)
    for name in ("seconds", "count"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            raise CLIError(f"--{name} must be positive, got {v}")
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
        import tifffile

        try:
            with atomic_path(args.save, "recording") as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
                result = _loop(sub, args, tw)
                if result["saved"] == 0:
                    raise _NothingRecorded
        except _NothingRecorded:
            print(
                f"nothing recorded: no {args.save_topic} frame arrived; {args.save} was not written",
                file=sys.stderr,
            )
            _finish(sub, args, result)
            return 1
        print(f"recorded {result['saved']} {args.save_topic} frames to {args.save}", file=sys.stderr)
        return _finish(sub, args, result)


def _loop(sub: Any, args: argparse.Namespace, writer: Any) -> dict[str, Any]:
    """Receive until --seconds, --count or Ctrl-C; print statistics once a second.

    Ctrl-C only sets a flag (checked at least every 0.25 s), so it never lands in the
    middle of writing a TIFF page.
    """
    import signal
    import threading

    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        return _receive(sub, args, writer, stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _receive(sub: Any, args: argparse.Namespace, writer: Any, stop: Any) -> dict[str, Any]:
    start = time.monotonic()
    deadline = start + args.seconds if args.seconds else math.inf
    next_report = start + 1.0
    received = saved = 0
    hinted = interrupted = False
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            msg = sub.recv(max(0.0, min(next_report, deadline, now + 0.25) - now))
            if msg is not None:
                received += 1
                if writer is not None and msg.topic == args.save_topic:
                    writer.write(
                        msg.array, description=json.dumps(msg.header), photometric="minisblack", metadata=None
                    )
                    saved += 1
                if args.count and (saved if writer is not None else received) >= args.count:
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
    interrupted = interrupted or stop.is_set()
    return {
        "received": received,
        "saved": saved,
        "interrupted": interrupted,
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
            f"latency p50 {p50} ms p99 {p99} ms  dropped {s['dropped']}",
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
            f"latency p50 {s['latency_p50_ms']} ms p99 {s['latency_p99_ms']} ms, dropped {s['dropped']}",
            file=sys.stderr,
        )
    if result["received"] == 0:
        print(
            f"no message arrived from {args.endpoint}; is `livedenoise demo` or `livedenoise serve` running?",
            file=sys.stderr,
        )
        return 1
    return 0
