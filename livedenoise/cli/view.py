"""``livedenoise view``: a live window of raw and restored frames side by side."""

from __future__ import annotations

import argparse
import sys

from livedenoise.app.viewer import ViewerUnavailable, run_viewer
from livedenoise.cli import CLIError
from livedenoise.transport.protocol import TOPICS
from livedenoise.transport.security import ClientSecurity

HELP = "live viewer: raw, restored (and truth) side by side in photoelectrons (needs the view extra)"
DESCRIPTION = """\
Open a window that subscribes to a livedenoise publisher (`demo` or `serve`) and shows the
newest camera frame of each topic side by side, all in photoelectrons: raw (converted from
ADU with the calibration the daemon names in its headers), restored, and the simulator's
truth when it is published. Zoom and pan are linked; one contrast is shared by all panels
(auto from percentiles of the restored frame, or set it with any panel's slider, Auto button
and histogram), or each panel has its own; "flip" (key F) shows the topics in turn in one
panel at the same place. The info line gives the frame number, frames/s received, latency
from acquisition, the daemon's drop count, model, calibration and QC when the header has it.
The viewer only ever draws the newest frame and queues little: it never slows the daemon.

Example:
  livedenoise demo                                     # in one terminal
  livedenoise view                                     # in another
  livedenoise view --seconds 5 --screenshot view.png   # non-interactive; exit 1 if no frame came
  xvfb-run -a livedenoise view --seconds 5 --screenshot view.png   # without a screen

Needs the `view` extra: pip install "livedenoise[view]" (ndv, PyQt6, vispy).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint", default="tcp://127.0.0.1:5555", help="publisher endpoint (default %(default)s)"
    )
    p.add_argument(
        "--topics",
        default="raw,denoised,truth",
        help="panels, comma-separated, in order (default %(default)s; truth appears only if published)",
    )
    p.add_argument("--seconds", type=float, default=None, help="close after N seconds (non-interactive)")
    p.add_argument("--screenshot", metavar="OUT.png", default=None, help="with --seconds: save the window")
    p.add_argument("--size", default="1500x640", help="window size WIDTHxHEIGHT (default %(default)s)")
    p.add_argument("--key", metavar="NAME.key_secret", default=None, help="CURVE secret key of this viewer")
    p.add_argument(
        "--server-key", metavar="server.key", default=None, help="the publisher's public CURVE key"
    )


def run(args: argparse.Namespace) -> int:

    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    if not topics or any(t not in TOPICS for t in topics) or len(set(topics)) != len(topics):
        raise CLIError(f"--topics takes some of {','.join(TOPICS)}, each once, got {args.topics!r}")
    if args.seconds is not None and not args.seconds > 0:
        raise CLIError(f"--seconds must be positive, got {args.seconds}")
    if args.screenshot and args.seconds is None:
        raise CLIError("--screenshot needs --seconds N (the window is saved when it closes after N s)")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CLIError(f"--size takes WIDTHxHEIGHT, e.g. 1500x640, got {args.size!r}") from None
    if (args.key is None) != (args.server_key is None):
        raise CLIError(
            "--key and --server-key go together (this viewer's secret key and the publisher's public key)"
        )
    security = None
    if args.key:
        security = ClientSecurity(args.key, args.server_key)

    try:
        result = run_viewer(
            args.endpoint,
            topics,
            seconds=args.seconds,
            screenshot=args.screenshot,
            security=security,
            size=(width, height),
        )
    except ViewerUnavailable as exc:
        raise CLIError(str(exc)) from None
    if result.screenshot is not None:
        print(f"screenshot of the window: {result.screenshot}", file=sys.stderr)
    if result.frames_shown == 0:
        print(f"no frame arrived: {result.status}", file=sys.stderr)
        return 1
    print(f"showed {result.frames_shown} frames (last: camera frame {result.last_frame})", file=sys.stderr)
    return 0
