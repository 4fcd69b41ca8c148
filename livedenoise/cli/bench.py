"""``livedenoise bench``: frames/s and latency of every stage of the live pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from livedenoise.app.bench import engine_table, markdown_table, run_bench, run_engine_bench
from livedenoise.cli._args import CLIError, add_threads_argument
from livedenoise.inference.engines import available_backends
from livedenoise.util.atomic import atomic_path

HELP = "measure the live pipeline (each stage and end to end) at 512² and 2048²"
DESCRIPTION = """\
Replays pre-generated uint16 frames through a Micro-Manager core (the simulator's
ReplayCamera, paced at --camera-fps), converts them to photoelectrons, passes the ring
buffer and the engine, and publishes to one real ZeroMQ subscriber on loopback (the
restored frames; --topics raw,denoised adds the raw ones). Prints a Markdown table: frames/s, drops, subscriber gaps, latency p50/p99 of
every stage and end to end, and the machine it ran on. Run it on a quiet machine.

Examples:
  livedenoise bench                                  # passthrough at 512² and 2048²
  livedenoise bench --engine passthrough --engine cpu --size 512 --seconds 10
  livedenoise bench --engine all --size 512      # every engine available on this machine
  livedenoise bench --size 2048 --subscriber process    # the subscriber in its own process
  livedenoise bench --size 2048 --topics raw,denoised   # both streams: twice the traffic
  livedenoise bench --json bench.json
  livedenoise bench --engine-only --engine cuda --engine tensorrt --size 512 --size 2048
                                                     # the engine alone on synthetic frames
"""


def _engines(asked: list[str]) -> tuple[str, ...]:
    """Expand ``all`` to every backend available here; say why the others are not."""
    if "all" not in asked:
        return tuple(dict.fromkeys(asked))
    out = [e for e in asked if e != "all"]
    for name, (ok, why) in available_backends().items():
        if ok:
            out.append(name)
        else:
            print(f"bench: engine {name} not available here: {why}", file=sys.stderr)
    return tuple(dict.fromkeys(out))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        action="append",
        default=None,
        help="engine to measure (repeatable; default passthrough); 'all' = every engine "
        "available here (the others are listed with the reason)",
    )
    p.add_argument(
        "--model", default=None, help="model for engines that run one (default: the engine's default)"
    )
    p.add_argument(
        "--size",
        type=int,
        action="append",
        default=None,
        help="square frame size in pixels (repeatable; default 512 and 2048)",
    )
    p.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per run (default %(default)s)"
    )
    p.add_argument(
        "--camera-fps",
        type=float,
        default=100.0,
        help="camera frame rate; 0 = as fast as the pipeline takes them (default %(default)s)",
    )
    p.add_argument("--ring-slots", type=int, default=16, help="ring buffer slots (default %(default)s)")
    p.add_argument(
        "--endpoint",
        default="tcp://127.0.0.1:*",
        help="where the publisher binds (default %(default)s: loopback TCP, free port; "
        "ipc:///tmp/livedenoise-bench.ipc is the other local transport)",
    )
    p.add_argument(
        "--topics",
        default="denoised",
        help="topics the one subscriber receives, comma-separated (default %(default)s: the "
        "pipeline's output; raw,denoised doubles the traffic)",
    )
    p.add_argument(
        "--subscriber",
        choices=("thread", "process"),
        default="thread",
        help="where the one subscriber runs: a thread of this process with its own ZeroMQ context "
        "(default), or `livedenoise subscribe` in a separate process, as a viewer would be",
    )
    p.add_argument(
        "--engine-only",
        action="store_true",
        help="time the engine alone on synthetic frames (no camera, ring or sockets): frames/s and "
        "latency p50/p99 per call",
    )
    p.add_argument(
        "-n", type=int, default=200, help="--engine-only: timed frames per size (default %(default)s)"
    )
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="--engine-only: frames per call (restore_many when > 1; default %(default)s)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp16", "bf16", "fp32"),
        default=None,
        help="--engine-only: engine precision (default: the engine's own choice)",
    )
    add_threads_argument(p)
    p.add_argument(
        "--json", metavar="OUT.json", default=None, help="also write the full report as JSON ('-' = stdout)"
    )


def run(args: argparse.Namespace) -> int:
    sizes = tuple(args.size or (512, 2048))
    if any(s < 16 or s > 8192 for s in sizes):
        raise CLIError(f"--size must be 16 to 8192 pixels, got {list(sizes)}")
    if args.seconds <= 0:
        raise CLIError(f"--seconds must be > 0, got {args.seconds:g}")
    if args.camera_fps < 0:
        raise CLIError(f"--camera-fps must be >= 0, got {args.camera_fps:g}")
    topics = tuple(t.strip() for t in args.topics.split(",") if t.strip())
    if not topics or any(t not in ("raw", "denoised") for t in topics):
        raise CLIError(f"--topics must be raw and/or denoised, got {args.topics!r}")
    engines = _engines(args.engine or ["passthrough"])
    if args.engine_only:
        if args.n < 1 or args.batch < 1:
            raise CLIError(f"-n and --batch must be >= 1, got {args.n} and {args.batch}")
        report = run_engine_bench(
            engines,
            tuple((s, s) for s in sizes),
            model=args.model,
            n=args.n,
            batch=args.batch,
            precision=args.precision,
            progress=lambda m: print(m, file=sys.stderr),
        )
        return _emit(report, engine_table(report), args.json)
    report = run_bench(
        sizes,
        engines,
        model=args.model,
        seconds=args.seconds,
        camera_fps=args.camera_fps,
        ring_slots=args.ring_slots,
        endpoint=args.endpoint,
        topics=topics,
        subscriber=args.subscriber,
        threads=args.threads,
        progress=lambda m: print(m, file=sys.stderr),
    )
    return _emit(report, markdown_table(report), args.json)


def _emit(report: dict[str, Any], table: str, json_out: str | None) -> int:
    if json_out == "-":
        print(json.dumps(report, indent=2))
        return 0
    print(table)
    if json_out:
        with atomic_path(json_out, "benchmark report") as tmp, open(tmp, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0
