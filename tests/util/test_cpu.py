"""The CPU's model and the features that pick its kernels (AMX and the like), from /proc/cpuinfo."""

from __future__ import annotations

import pytest

from livedenoise.util.cpu import KERNEL_FLAGS, cpu_flags, cpu_model

AMX_XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16
"""
OLDER_XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni
"""


def test_flags_and_model_are_read_from_cpuinfo(tmp_path):
    new, old = tmp_path / "amx", tmp_path / "old"
    new.write_text(AMX_XEON)
    old.write_text(OLDER_XEON)
    assert cpu_model(str(new)) == cpu_model(str(old)) == "Intel(R) Xeon(R) Processor"
    assert cpu_flags(str(new)) == [
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    ]
    assert cpu_flags(str(old)) == ["avx2", "avx512f", "avx512_vnni"]  # one name, other kernels


def test_no_cpuinfo_says_nothing_rather_than_failing(tmp_path):
    missing = str(tmp_path / "none")
    assert cpu_flags(missing) == []
    assert cpu_model(missing)  # what platform says


def test_this_machines_flags_are_its_own():
    import pathlib

    info = pathlib.Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    have = set()
    for line in info.read_text(errors="replace").splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            have = set(line.split(":", 1)[1].split())
            break
    assert cpu_flags() == [f for f in KERNEL_FLAGS if f in have]
