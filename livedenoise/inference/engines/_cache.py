"""On-disk cache of compiled engines (TensorRT), keyed by everything that changes the build.

A compiled TensorRT engine is only valid for one network (weights and architecture), one
frame shape, one precision, one TensorRT / torch-tensorrt pair and one GPU model. The cache
key is the sha256 of all of these (plus the livedenoise version), so a change of any one of
them gives a new entry and an old entry is never loaded where it does not belong.

Layout::

    <cache root>/                       $LIVEDENOISE_CACHE/trt, else ~/.cache/livedenoise/trt
        <key[:2]>/<key>/
            engine.pt2                  the compiled program (torch.export archive)
            meta.json                   the key's inputs, the file's sha256, build time

An entry is written into a temporary folder beside its final place and renamed into place
only when complete, so a crash mid-build leaves nothing that looks like an entry. An entry
whose ``meta.json`` is missing or unreadable, whose inputs differ from the key's, whose file
hash does not match, or that fails to load, is removed and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["CACHE_ENV", "CacheKey", "EngineCache", "default_cache_dir", "file_sha256"]

log = logging.getLogger("livedenoise")

CACHE_ENV = "LIVEDENOISE_CACHE"
ENTRY_FILE = "engine.pt2"
META_FILE = "meta.json"
META_SCHEMA = 1

T = TypeVar("T")


def default_cache_dir() -> Path:
    """``$LIVEDENOISE_CACHE/trt`` when that variable is set, else ``~/.cache/livedenoise/trt``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "trt"
    return Path.home() / ".cache" / "livedenoise" / "trt"


def file_sha256(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """Everything a compiled engine depends on; ``digest()`` is the cache key.

    Attributes
    ----------
    model_sha256 : str
        sha256 of the network: weights, class and architecture
        (:func:`livedenoise.inference.engines.tensorrt.model_sha256`).
    shape : tuple of int
        Input shape the engine was built for, ``(N, C, H, W)`` or ``(H, W)``.
    precision : str
        ``"fp16"``, ``"bf16"`` or ``"fp32"``.
    tensorrt_version, torch_tensorrt_version : str
        Versions of the builder.
    gpu_name : str
        ``torch.cuda.get_device_name()``.
    compute_capability : tuple of int
        ``torch.cuda.get_device_capability()``, e.g. ``(9, 0)``.
    livedenoise_version : str
        ``livedenoise.__version__``.
    """

    model_sha256: str
    shape: tuple[int, ...]
    precision: str
    tensorrt_version: str
    torch_tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    livedenoise_version: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "compute_capability", tuple(int(c) for c in self.compute_capability))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value in ("", ()):
                raise ValueError(f"cache key field {field.name!r} is empty; every field must be known")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["compute_capability"] = list(self.compute_capability)
        return d

    def digest(self) -> str:
        """sha256 hex digest of the canonical JSON of all fields."""
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


class EngineCache:
    """A folder of compiled engines, one sub-folder per :class:`CacheKey`.

    Parameters
    ----------
    root : path, optional
        Cache folder; default :func:`default_cache_dir`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def entry_dir(self, key: CacheKey) -> Path:
        """Folder of ``key``'s entry (it may not exist)."""
        digest = key.digest()
        return self.root / digest[:2] / digest

    def lookup(self, key: CacheKey) -> Path | None:
        """Path of a valid cached engine file for ``key``, or ``None``.

        An entry that exists but is damaged (unreadable metadata, other inputs, wrong file
        hash) is removed, with a warning, and ``None`` is returned.
        """
        folder = self.entry_dir(key)
        if not folder.exists():
            return None
        problem = self._check_entry(folder, key)
        if problem is None:
            return folder / ENTRY_FILE
        log.warning("engine cache entry %s is damaged (%s); removing it and rebuilding", folder, problem)
        self.remove(key)
        return None

    @staticmethod
    def _check_entry(folder: Path, key: CacheKey) -> str | None:
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError) as exc:
            return f"cannot read {META_FILE}: {exc}"
        if not isinstance(meta, dict) or meta.get("schema") != META_SCHEMA:
            return f"{META_FILE} has an unknown schema"
        if meta.get("key") != key.as_dict():
            return f"{META_FILE} describes another build"
        engine = folder / ENTRY_FILE
        if not engine.is_file():
            return f"{ENTRY_FILE} is missing"
        if file_sha256(engine) != meta.get("file_sha256"):
            return f"{ENTRY_FILE} does not match its recorded sha256"
        return None

    def store(self, key: CacheKey, build: Callable[[Path], None], **extra_meta: Any) -> Path:
        """Run ``build(path)`` to write the engine file, then publish the entry atomically.

        ``build`` writes the engine to the path it is given (a file in a temporary folder).
        If it raises, nothing is left in the cache. Returns the engine file's final path.
        """
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:16]}.", suffix=".part", dir=final.parent))
        try:
            t0 = time.perf_counter()
            build(tmp / ENTRY_FILE)
            if not (tmp / ENTRY_FILE).is_file():
                raise RuntimeError(f"the engine builder wrote no file at {tmp / ENTRY_FILE}")
            meta = {
                "schema": META_SCHEMA,
                "key": key.as_dict(),
                "digest": key.digest(),
                "file_sha256": file_sha256(tmp / ENTRY_FILE),
                "build_s": round(time.perf_counter() - t0, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **extra_meta,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            if final.exists():  # a damaged entry, or one another process finished meanwhile
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final / ENTRY_FILE

    def remove(self, key: CacheKey) -> None:
        """Delete ``key``'s entry if there is one."""
        shutil.rmtree(self.entry_dir(key), ignore_errors=True)

    def load_or_build(
        self,
        key: CacheKey,
        build: Callable[[Path], None],
        load: Callable[[Path], T],
        **extra_meta: Any,
    ) -> tuple[T, bool]:
        """Load ``key``'s engine, building and storing it first when needed.

        Returns ``(loaded, from_cache)``. A cached entry that fails to ``load`` is treated as
        damaged: removed, rebuilt once, and loaded again (an error then propagates).
        """
        path = self.lookup(key)
        if path is not None:
            try:
                loaded = load(path)
            except Exception as exc:
                log.warning("cached engine %s failed to load (%s); removing it and rebuilding", path, exc)
                self.remove(key)
            else:
                log.info("engine loaded from cache %s", path)
                return loaded, True
        path = self.store(key, build, **extra_meta)
        return load(path), False
