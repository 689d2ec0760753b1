"""Assemble our PV test kernels (tests/pv/kernels/*.S) with binutils at test time."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parent / "kernels"


def assemble(name: str, out_dir: Path) -> Path:
    """``kernels/<name>.S`` -> an ELF PV kernel in ``out_dir``."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) not installed")
    src, obj, elf = KERNELS / f"{name}.S", out_dir / f"{name}.o", out_dir / f"{name}.elf"
    subprocess.run(["as", "--64", "-I", str(KERNELS), "-o", str(obj), str(src)], check=True,
                   capture_output=True)
    subprocess.run(["ld", "-T", str(KERNELS / "kernel.ld"), "-z", "max-page-size=4096",
                    "-o", str(elf), str(obj)], check=True, capture_output=True)
    return elf
