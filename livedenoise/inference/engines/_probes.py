"""On-disk cache of start-up probes (precision validation, bf16 vs fp32 timing), per model and machine.

A probe that does not depend on the frame (is bf16 accurate enough for this network? is it
faster on this CPU?) gives the same answer at every start on one machine with one set of
libraries, so it is measured once and read back afterwards. That makes starts fast and the
output reproducible: the same command on the same file restores with the same precision,
instead of a timing race deciding it at each start.

The key is the sha256 of everything the answer depends on: the kind of probe, the model's
weights (sha256), what was asked (``auto`` or ``bf16``), the probe's own thresholds, the
machine (CPU model and the features that pick its kernels, such as AMX, core count, torch's CPU
capability and thread count) and the versions of
livedenoise, torch and numpy. A change of any one of them gives a new entry.

Layout::

    <cache root>/                   $LIVEDENOISE_CACHE/probes, else ~/.cache/livedenoise/probes
        <key>.json                  {"schema": 1, "key": {...}, "result": {...}, "created": ...}

The folder is safe to delete at any time (the probes then run once more). An entry that is
unreadable, of another schema or whose key fields differ from the expected ones is ignored
and replaced; a cache folder that cannot be written only costs the probe at the next start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from livedenoise import __version__
from livedenoise.util.atomic import atomic_path
from livedenoise.util.cpu import cpu_flags, cpu_model

__all__ = [
    "PROBE_SCHEMA",
    "lookup",
    "machine_fingerprint",
    "probe_cache_dir",
    "probe_key",
    "store",
]

log = logging.getLogger("livedenoise")

PROBE_SCHEMA = 2
"""2 (2026-12-07): the networks' bf16 numerics changed (RESUNET's skip, RLN's output mean), so the
answers cached under 1 are measured again."""
CACHE_ENV = "LIVEDENOISE_CACHE"


def probe_cache_dir() -> Path:
    """``$LIVEDENOISE_CACHE/probes`` when that variable is set, else ``~/.cache/livedenoise/probes``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "probes"
    return Path.home() / ".cache" / "livedenoise" / "probes"


def machine_fingerprint() -> dict[str, Any]:
    """What a CPU probe's answer depends on besides the model: CPU, cores, library versions."""
    import numpy as np
    import torch

    try:
        cap = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch
        cap = "unknown"
    return {
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count() or 0,
        "cpu_capability": cap,
        "torch_threads": int(torch.get_num_threads()),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "livedenoise": __version__,
    }


def probe_key(kind: str, model_sha256: str, **fields: Any) -> dict[str, Any]:
    """The key fields of a probe: its kind, the model's sha256, ``fields`` and the machine."""
    if not model_sha256:
        raise ValueError("a probe key needs the model's sha256 (an unhashed model is never cached)")
    return {"kind": kind, "model_sha256": model_sha256, **fields, **machine_fingerprint()}


def _digest(key: dict[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _path(key: dict[str, Any], root: Path | None) -> Path:
    return (root or probe_cache_dir()) / f"{_digest(key)}.json"


def lookup(key: dict[str, Any], root: Path | None = None) -> dict[str, Any] | None:
    """The cached result of the probe ``key``, or None (missing, unreadable or not this key)."""
    path = _path(key, root)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.debug("probe cache %s unreadable (%s): probing again", path, exc)
        return None
    canonical = json.loads(json.dumps(key, default=str))
    if (
        not isinstance(entry, dict)
        or entry.get("schema") != PROBE_SCHEMA
        or entry.get("key") != canonical
        or not isinstance(entry.get("result"), dict)
    ):
        log.debug("probe cache %s is not an entry for this key: probing again", path)
        return None
    return dict(entry["result"])


def store(key: dict[str, Any], result: dict[str, Any], root: Path | None = None) -> Path | None:
    """Write ``result`` for ``key`` atomically; returns the file, or None if the cache is not writable."""
    path = _path(key, root)
    entry = {
        "schema": PROBE_SCHEMA,
        "key": key,
        "result": result,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, "probe cache entry") as tmp:
            tmp.write_text(json.dumps(entry, indent=1, default=str), encoding="utf-8")
    except Exception as exc:  # a cache that cannot be written is not an error
        log.info("probe cache %s not written (%s); the probe will run again at the next start", path, exc)
        return None
    return path
