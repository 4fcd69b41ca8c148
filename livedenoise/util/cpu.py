"""What the CPU is: its model name and the features that decide which kernels run on it."""

from __future__ import annotations

import platform

__all__ = ["KERNEL_FLAGS", "cpu_flags", "cpu_model"]

KERNEL_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
"""CPU features that decide which kernels oneDNN runs: with AMX (``amx_bf16``) the networks run about
three times faster in bfloat16 than in float32; without ``avx512_bf16`` bfloat16 is emulated and slower.
Two hosts with one model name ("Intel(R) Xeon(R) Processor" in many VMs) may differ in them."""


CPUINFO = "/proc/cpuinfo"


def _cpuinfo_field(path: str, *names: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in names and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model(cpuinfo: str = CPUINFO) -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` says)."""
    return _cpuinfo_field(cpuinfo, "model name") or platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str = CPUINFO) -> list[str]:
    """The :data:`KERNEL_FLAGS` this CPU has, in that order (empty where ``/proc/cpuinfo`` cannot say)."""
    have = set((_cpuinfo_field(cpuinfo, "flags", "features") or "").split())
    return [f for f in KERNEL_FLAGS if f in have]
