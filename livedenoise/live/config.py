"""Validated pipeline configuration (frozen, loadable from TOML).

Every field carries its unit in its name. Invalid values raise :class:`ConfigError`
naming the field, the value that came and what is allowed::

    ring_slots = 1 is out of range: expected an integer in [2, 4096]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from livedenoise.calibration.maps import GAIN_RANGE_ADU_PER_E
from livedenoise.live.types import RingPolicy
from livedenoise.util.endpoints import is_loopback

__all__ = ["ConfigError", "PipelineConfig"]

__all__ = ["ConfigError", "PipelineConfig"]


class ConfigError(ValueError):
    """A configuration value outside its allowed range; the message names the field."""


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of one :class:`livedenoise.live.pipeline.Pipeline`.

    Attributes
    ----------
    ring_slots : int
        Frames the ring buffer holds between acquisition and restoration (2-4096).
    ring_policy : str
        ``"drop-oldest"`` (live default: the oldest unrestored frame is overwritten and
        counted) or ``"block"`` (acquisition waits for the engine; nothing is lost, but the
        core's own buffer may overflow instead).
    pub_endpoint, control_endpoint : str
        ZeroMQ endpoints of the frame publisher (PUB) and the control socket (REP).
    engine : str
        ``auto`` or a backend name (``passthrough``, ``cpu``, ...).
    model : str or None
        Model id or path (None: the engine's default model).
    calibration_path : str or None
        Calibration TIFF (:mod:`livedenoise.calibration.maps`).
    no_calibration : bool
        Use a uniform nominal gain/offset instead of a calibration file (real cameras only
        with this explicit choice).
    nominal_gain_adu_per_e, nominal_offset_adu : float or None
        The nominal values used with ``no_calibration``.
    allow_remote : bool
        Allow binding endpoints that are not loopback (then protected with CURVE keys).
    security_dir : str or None
        Folder of the CURVE key pairs (used with ``allow_remote``).
    stats_interval_s : float
        Period of the live statistics (0.1-3600 s).
    poll_interval_ms : float
        How often the acquisition thread polls the core when it has no frame and one is due
        (0.05-100 ms); between frames it sleeps longer, up to 5 ms (``sources.idle_wait_s``).
    publish_truth : bool
        Publish the simulator's noise-free image as topic ``truth`` (demo only).
    max_engine_failures : int
        Consecutive engine failures after which the pipeline stops (1-100000).
    latency_samples : int
        Size of each per-stage latency reservoir (64-1000000).
    qc_stride : int
        The trust score of each restored frame (``qc`` in the ``denoised`` header) uses every
        ``qc_stride``-th row (1-64; 0 switches it off).
    data_dir : str or None
        The folder where control requests may write datasets (``collect_pairs`` ``output``
        and positions files resolve inside it); None: no pairs are collected on request.
    model_dirs : tuple of str
        Folders (besides ``$LIVEDENOISE_MODELS`` and the shipped models) that ``set_model``
        requests may load models from, by id or by a path inside them.
    drain_timeout_s : float
        At stop, the frames already acquired are restored for at most this long (0-3600 s); the
        ones still waiting then are counted as dropped (``stopped``), so a stop is bounded.
    """

    ring_slots: int = 8
    ring_policy: RingPolicy = RingPolicy.DROP_OLDEST
    pub_endpoint: str = "tcp://127.0.0.1:5555"
    control_endpoint: str = "tcp://127.0.0.1:5556"
    engine: str = "auto"
    model: str | None = None
    calibration_path: str | None = None
    no_calibration: bool = False
    nominal_gain_adu_per_e: float | None = None
    nominal_offset_adu: float | None = None
    allow_remote: bool = False
    security_dir: str | None = None
    stats_interval_s: float = 1.0
    poll_interval_ms: float = 0.5
    publish_truth: bool = False
    max_engine_failures: int = 10
    qc_stride: int = 4
    latency_samples: int = 4096
    data_dir: str | None = None
    model_dirs: tuple[str, ...] = ()
    drain_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _int_range(self, "ring_slots", 2, 4096)
        if self.ring_policy not in tuple(RingPolicy):
            raise ConfigError(
                f"ring_policy = {self.ring_policy!r} is not allowed: expected one of {', '.join(RingPolicy)}"
            )
        object.__setattr__(self, "ring_policy", RingPolicy(self.ring_policy))
        for name in ("pub_endpoint", "control_endpoint"):
            value = getattr(self, name)
            if not isinstance(value, str) or "://" not in value:
                raise ConfigError(
                    f"{name} = {value!r} is not a ZeroMQ endpoint: expected e.g. 'tcp://127.0.0.1:5555'"
                )
            if not self.allow_remote and not is_loopback(value):
                raise ConfigError(
                    f"{name} = {value!r} is not a loopback address; binding it exposes the microscope "
                    "to the network: use tcp://127.0.0.1:PORT, or set allow_remote (--allow-remote), "
                    "which protects the sockets with CURVE keys"
                )
        if self.pub_endpoint == self.control_endpoint:
            raise ConfigError(
                f"pub_endpoint and control_endpoint are both {self.pub_endpoint!r}: use two endpoints"
            )
        if not isinstance(self.engine, str) or not self.engine:
            raise ConfigError(
                f"engine = {self.engine!r}: expected a backend name such as 'auto' or 'passthrough'"
            )
        for name in ("model", "calibration_path", "security_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise ConfigError(f"{name} = {value!r}: expected a string or nothing")
        if self.no_calibration and self.calibration_path:
            raise ConfigError(
                f"no_calibration is set and calibration_path = {self.calibration_path!r}: choose one"
            )
        if self.no_calibration:
            for name in ("nominal_gain_adu_per_e", "nominal_offset_adu"):
                if getattr(self, name) is None:
                    raise ConfigError(
                        f"no_calibration needs {name} (the camera's nominal value from its data sheet); "
                        f"got none: pass --{name.replace('_', '-')}"
                    )
        if self.nominal_gain_adu_per_e is not None:
            _float_range(self, "nominal_gain_adu_per_e", *GAIN_RANGE_ADU_PER_E)
        if self.nominal_offset_adu is not None:
            _float_range(self, "nominal_offset_adu", 0.0, 65535.0)
        _float_range(self, "stats_interval_s", 0.1, 3600.0)
        _float_range(self, "poll_interval_ms", 0.05, 100.0)
        _int_range(self, "max_engine_failures", 1, 100000)
        _int_range(self, "latency_samples", 64, 1_000_000)
        _float_range(self, "drain_timeout_s", 0.0, 3600.0)
        _int_range(self, "qc_stride", 0, 64)
        for name in ("no_calibration", "allow_remote", "publish_truth"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} = {getattr(self, name)!r}: expected true or false")
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", _folder(self, "data_dir", self.data_dir))
        dirs = self.model_dirs
        if isinstance(dirs, str | os.PathLike) or not isinstance(dirs, tuple | list):
            raise ConfigError(f"model_dirs = {dirs!r}: expected a list of folders")
        object.__setattr__(self, "model_dirs", tuple(_folder(self, "model_dirs", d) for d in dirs))

    # -- construction ---------------------------------------------------------------

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "configuration") -> PipelineConfig:
        """Build from a mapping; unknown keys are an error that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> PipelineConfig:
        """Load a TOML file: top-level keys, or a ``[pipeline]`` table.

        Example::

            [pipeline]
            ring_slots = 16
            ring_policy = "block"
            engine = "cpu"
            calibration_path = "cal.tif"
        """
        path = Path(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        if isinstance(data.get("pipeline"), dict):
            data = data["pipeline"]
        return cls.from_dict(data, source=str(path))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict of the settings (for ``status``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _folder(cfg: PipelineConfig, name: str, value: Any) -> str:
    """An existing folder, as an absolute path string."""
    if not isinstance(value, str | os.PathLike) or not os.fspath(value) or "\x00" in os.fspath(value):
        raise ConfigError(f"{name} = {value!r}: expected the path of a folder")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"{name} = {os.fspath(value)!r} is not an existing folder: create it or name another"
        )
    return str(path.resolve())


def _int_range(cfg: PipelineConfig, name: str, lo: int, hi: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} = {value!r} is out of range: expected an integer in [{lo}, {hi}]")


def _float_range(cfg: PipelineConfig, name: str, lo: float, hi: float, *, low_open: bool = False) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        ok = (lo < value if low_open else lo <= value) and value <= hi
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(
            f"{name} = {value!r} is out of range: expected a number in {bracket}{lo:g}, {hi:g}]"
        )
