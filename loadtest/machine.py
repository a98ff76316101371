"""What a benchmark ran on: every result file names the CPU (model, flags), the GPU if any, and the dtype."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from typing import Any

from backends.local.hardware import choose_dtype, read_cpu


def gpu_name() -> str | None:
    nvidia = shutil.which("nvidia-smi")
    if not nvidia:
        return None
    out = subprocess.run([nvidia, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine(dtype_setting: str = "auto") -> dict[str, Any]:
    """The machine block of a benchmark result: date, CPU, GPU, memory, and the dtype `auto` resolves to here."""
    cpu = read_cpu()
    gpu = gpu_name()
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu.as_dict(),
        "cpu_line": cpu.describe(),
        "gpu": gpu,
        "memory_gib": round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1) if pages else None,
        "dtype": choose_dtype(dtype_setting, "gpu" if gpu else "cpu", cpu),
        "python": platform.python_version(),
    }


def describe(m: dict[str, Any]) -> str:
    """One line for a table caption or README row."""
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return f"{m['date']}, {m['cpu_line']}{gpu}, dtype {m['dtype']}"
