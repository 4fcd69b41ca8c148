"""Extract the real-structure evaluation crops from sample-data files shipped inside PyPI wheels.

Run once by a maintainer; its output is committed under ``livedenoise/training/data/real/``
(small float32 TIFF crops, ``SOURCES.json``). Nothing is ever fetched at run time.

    mkdir -p /tmp/wheels && cd /tmp/wheels
    for p in stardist==0.9.2 mahotas==1.4.19 spotiflow==0.6.5 flowdec==1.1.0 sdeconv==1.0.4; do
        pip download --no-deps -d . "$p"; done
    python tools/extract_real_images.py /tmp/wheels

Each crop is one 2D fluorescence image (a slice, or a maximum projection of a stack), cropped
to the 256x256 window with the most structure (largest standard deviation on a 32-pixel grid),
its dark level (1st percentile) subtracted, clipped at 0 and scaled so that its 99.9th
percentile is 1: a relative object, which the evaluation blurs with a PSF, scales to a photon
level, adds a background to and passes through the camera model. The images keep their own
(modest) noise and blur; they are structure for evaluation only, never training data.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "livedenoise" / "training" / "data" / "real"
SIZE = 256

# name -> where it is, what it shows, its licence and its origin
SOURCES = [
    {
        "name": "nuclei-dsb",
        "wheel": "stardist-0.9.2-*.whl",
        "member": "stardist/data/images/img2d.tif",
        "structure": "nuclei (fluorescence, 2018 Data Science Bowl / BBBC038)",
        "package": "stardist 0.9.2 (BSD-3-Clause)",
        "origin": "Caicedo et al., Nat Methods 16:1247 (2019); BBBC038v1 (Broad Bioimage Benchmark "
        "Collection), as shipped by stardist.data.test_image_nuclei_2d",
        "take": "2d",
    },
    {
        "name": "nuclei-u2os",
        "wheel": "mahotas-1.4.19-*.whl",
        "member": "mahotas/demos/data/nuclear.png",
        "structure": "nuclei with bright foci (Hoechst, U2OS)",
        "package": "mahotas 1.4.19 (MIT)",
        "origin": "mahotas.demos.load('nuclear'); from Coelho, Shariff & Murphy, ISBI 2009 "
        "(hand-segmented nuclei dataset)",
        "take": "png-red",
    },
    {
        "name": "chromatin-terra",
        "wheel": "spotiflow-0.6.5-*.whl",
        "member": "spotiflow/sample_data/images/img_terra_2d.tif",
        "structure": "dense textured nuclei with puncta (TERRA, chromatin texture)",
        "package": "spotiflow 0.6.5 (BSD-3-Clause)",
        "origin": "Spotiflow paper sample data (Dominguez Mantes et al., doi:10.1101/2024.02.01.578426), "
        "spotiflow.sample_data.test_image_terra_2d",
        "take": "2d",
    },
    {
        "name": "puncta-hybiss",
        "wheel": "spotiflow-0.6.5-*.whl",
        "member": "spotiflow/sample_data/images/img_hybiss_2d.tif",
        "structure": "punctate spots on tissue autofluorescence (HybISS)",
        "package": "spotiflow 0.6.5 (BSD-3-Clause)",
        "origin": "Spotiflow paper sample data, spotiflow.sample_data.test_image_hybiss_2d",
        "take": "2d",
    },
    {
        "name": "dendrites-purkinje",
        "wheel": "flowdec-1.1.0-*.whl",
        "member": "flowdec/datasets/neuron-25pct/data.tif",
        "structure": "neuron dendrites (Purkinje neuron, widefield stack, maximum projection)",
        "package": "flowdec 1.1.0 (Apache-2.0)",
        "origin": "Cell Image Library CCDB:2 (Purkinje neuron), 25 % downsampled by flowdec "
        "(flowdec.data.neuron_25pct)",
        "take": "max-projection",
    },
    {
        "name": "intestine-celegans",
        "wheel": "sdeconv-1.0.4-*.whl",
        "member": "sdeconv/data/celegans.tif",
        "structure": "tubular structure (C. elegans intestine, Airyscan confocal)",
        "package": "sdeconv 1.0.4 (BSD-3-Clause)",
        "origin": "sdeconv.data.celegans (Serpico team, Inria / SERPICO)",
        "take": "2d",
    },
    {
        "name": "pollen-sdeconv",
        "wheel": "sdeconv-1.0.4-*.whl",
        "member": "sdeconv/data/pollen.tif",
        "structure": "pollen grain shells with spines (confocal stack, middle slice)",
        "package": "sdeconv 1.0.4 (BSD-3-Clause)",
        "origin": "sdeconv.data.pollen (Serpico team, Inria)",
        "take": "middle-slice",
    },
]


def _read(wheels: Path, src: dict) -> tuple[np.ndarray, str]:
    import tifffile

    matches = sorted(p for p in wheels.iterdir() if fnmatch.fnmatch(p.name, src["wheel"]))
    if not matches:
        raise SystemExit(f"no wheel matching {src['wheel']} in {wheels}; pip download it first (see --help)")
    with zipfile.ZipFile(matches[0]) as zf:
        data = zf.read(src["member"])
    sha = hashlib.sha256(data).hexdigest()
    if src["member"].endswith(".png"):
        from PIL import Image

        img = np.asarray(Image.open(io.BytesIO(data)))
    else:
        img = tifffile.imread(io.BytesIO(data))
    img = np.asarray(img, np.float64)
    take = src["take"]
    if take == "png-red":
        img = img[..., 0]
    elif take == "max-projection":
        img = img.max(axis=0)
    elif take == "middle-slice":
        img = img[img.shape[0] // 2]
    if img.ndim != 2:
        raise SystemExit(f"{src['member']}: expected a 2D image after {take!r}, got shape {img.shape}")
    return img, sha


def _best_window(img: np.ndarray, size: int, step: int = 32) -> tuple[int, int]:
    h, w = img.shape
    best, where = -1.0, (0, 0)
    for y in range(0, max(1, h - size + 1), step):
        for x in range(0, max(1, w - size + 1), step):
            s = float(img[y : y + size, x : x + size].std())
            if s > best:
                best, where = s, (y, x)
    return where


def main(argv: list[str] | None = None) -> int:
    import tifffile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wheels", type=Path, help="folder holding the downloaded wheels")
    p.add_argument("-o", "--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    index = []
    for src in SOURCES:
        img, sha = _read(args.wheels, src)
        if min(img.shape) < SIZE:
            raise SystemExit(f"{src['name']}: image {img.shape} smaller than {SIZE}²")
        y, x = _best_window(img, SIZE)
        crop = img[y : y + SIZE, x : x + SIZE]
        crop = np.clip(crop - np.percentile(crop, 1.0), 0, None)
        crop = (crop / max(float(np.percentile(crop, 99.9)), 1e-12)).astype(np.float32)
        path = args.out / f"{src['name']}.tif"
        tifffile.imwrite(path, crop, photometric="minisblack", compression="zlib")
        entry = {k: v for k, v in src.items() if k not in ("wheel", "take")}
        entry.update(
            {
                "file": path.name,
                "wheel": src["wheel"].replace("-*.whl", ""),
                "member_sha256": sha,
                "source_shape": list(img.shape),
                "how": f"{src['take']}, crop y={y} x={x} {SIZE}x{SIZE}, minus 1st percentile, "
                "clipped at 0, / 99.9th percentile",
            }
        )
        index.append(entry)
        print(f"{path.name}: from {src['member']} ({img.shape}) at y={y} x={x}")
    licences = args.out / "LICENSES"
    licences.mkdir(exist_ok=True)
    for pattern in sorted({src["wheel"] for src in SOURCES}):
        wheel = sorted(p for p in args.wheels.iterdir() if fnmatch.fnmatch(p.name, pattern))[0]
        with zipfile.ZipFile(wheel) as zf:
            names = [
                n
                for n in zf.namelist()
                if ".dist-info/" in n and "LICEN" in n.upper() and not n.endswith("/")
            ]
            text = "\n\n".join(f"== {n}\n{zf.read(n).decode('utf-8', 'replace')}" for n in names)
            if not text:  # no licence file: the licence the package declares in its metadata
                meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
                lines = zf.read(meta).decode("utf-8", "replace").splitlines()
                declared = [
                    ln
                    for ln in lines
                    if ln.startswith(("Name:", "Version:", "Author", "License", "Classifier: License"))
                ]
                text = (
                    f"== {meta} (the wheel ships no licence file; its declared licence)\n"
                    + "\n".join(declared)
                    + "\n"
                )
        (licences / f"{pattern.replace('-*.whl', '')}.txt").write_text(
            text or f"(no licence file in {wheel.name})\n"
        )
    (args.out / "SOURCES.json").write_text(json.dumps({"livedenoise_real_set": 1, "images": index}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
