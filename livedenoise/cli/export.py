"""``livedenoise export``: write a model as an ONNX graph (for TensorRT, onnxruntime, other tools)."""

from __future__ import annotations

import argparse
import re
import sys

from livedenoise.cli import CLIError
from livedenoise.inference.engines.onnx import DEFAULT_OPSET, export_onnx, read_onnx_metadata

HELP = "export a model to ONNX (the graph TensorRT and onnxruntime build from)"
DESCRIPTION = """\
Export a restoration network to an ONNX file: input `x`, output `y`, float32 (N, 1, H, W)
photoelectrons, the model card in the file's metadata. H and W are dynamic unless --shape
fixes them (TensorRT builds faster from a fixed shape).

Example:
  livedenoise export --model rln-denoise-v1 --format onnx -o rln.onnx --shape 512x512
  trtexec --onnx=rln.onnx --fp16 --saveEngine=rln-512.plan      # on a GPU machine
"""

FORMATS = ("onnx",)


def parse_shape(text: str) -> tuple[int, int]:
    """``"512x512"`` -> ``(512, 512)`` (height x width)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×,]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 512x512, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        "-m",
        default=None,
        help="model id (see `livedenoise models`) or model file; default: the default model",
    )
    parser.add_argument(
        "--format", "-f", choices=FORMATS, default="onnx", help="output format (default onnx)"
    )
    parser.add_argument("-o", "--output", required=True, help="file to write, e.g. rln.onnx")
    parser.add_argument(
        "--shape",
        type=parse_shape,
        default=None,
        help="fixed frame shape HEIGHTxWIDTH (default: dynamic height and width)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset version (default 17)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.output)
    if out.exists() and not args.force:
        raise CLIError(f"{out} already exists; pass --force to overwrite it or choose another -o")
    if out.suffix.lower() != ".onnx":
        raise CLIError(f"the output of --format onnx should end in .onnx, got {out.name!r}")
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if not 13 <= opset <= 20:
        raise CLIError(f"--opset must be between 13 and 20, got {opset}")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CLIError('ONNX export needs the onnx package: pip install -e ".[onnx]"') from None
    export_onnx(args.model, out, shape=args.shape, opset=opset)
    meta = read_onnx_metadata(out)
    shape = meta.get("shape", "dynamic")
    print(
        f"wrote {out} (model {meta.get('model_id') or '?'}, shape {shape}, opset {opset}, "
        f"{out.stat().st_size / 1e6:.2f} MB)",
        file=sys.stdout,
    )
    return 0
