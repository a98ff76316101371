"""The dtype follows the CPU: bf16 only where the hardware computes it, fp32 elsewhere, explicit settings win."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.local.hardware import CpuInfo, choose_dtype, parse_cpuinfo, read_cpu

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
# Two "AMD EPYC" machines this project ran on: only family/model and the flags tell Zen 3 from Zen 4.
EPYC_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512dq avx512_vnni avx512_bf16 avx512vbmi
"""
# The third "AMD EPYC" (2026-12-04, Zen 5): AVX-512 with bf16 and no AMX, as the Zen 4, but family 26.
EPYC_ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 fma avx2 avx512f avx512dq avx_vnni avx512_bf16 avx512vbmi avx512_vnni avx512_vp2intersect
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sve asimdrdm bf16 i8mm
CPU implementer\t: 0x41
"""


def test_avx2_only_cpu_trains_and_serves_in_fp32() -> None:
    cpu = parse_cpuinfo(EPYC_AVX2, arch="x86_64", cores=2)
    assert cpu.model == "AMD EPYC 7B13" and not cpu.native_bf16
    assert cpu.relevant_flags == ["avx2", "fma", "f16c"]
    assert choose_dtype("auto", "cpu", cpu) == "float32"
    assert "no native bf16" in cpu.describe() and "AMD EPYC 7B13" in cpu.describe()


@pytest.mark.parametrize("text", [SAPPHIRE_RAPIDS, GRAVITON3])
def test_native_bf16_cpus_keep_bf16(text: str) -> None:
    cpu = parse_cpuinfo(text, arch="x86_64", cores=2)
    assert cpu.native_bf16
    assert choose_dtype("auto", "cpu", cpu) == "bfloat16"


def test_only_the_bf16_instructions_count_not_avx512_alone() -> None:
    cpu = parse_cpuinfo("model name: Skylake\nflags: avx2 avx512f avx512_vnni\n", cores=1)
    assert not cpu.native_bf16 and choose_dtype("auto", "cpu", cpu) == "float32"


def test_gpu_keeps_bf16_and_explicit_settings_win() -> None:
    avx2 = parse_cpuinfo(EPYC_AVX2, cores=2)
    assert choose_dtype("auto", "gpu", avx2) == "bfloat16"
    assert choose_dtype("bfloat16", "cpu", avx2) == "bfloat16"
    assert choose_dtype("float32", "gpu", avx2) == "float32"
    with pytest.raises(ValueError, match="auto, bfloat16, float32"):
        choose_dtype("bf17", "cpu", avx2)


def test_unreadable_cpuinfo_is_no_native_bf16(tmp_path: Path) -> None:
    cpu = read_cpu(tmp_path / "missing")
    assert cpu.flags == frozenset() and not cpu.native_bf16 and cpu.cores >= 1


def test_this_machine_is_described_with_its_flags() -> None:
    cpu = read_cpu()
    as_dict = cpu.as_dict()
    assert set(as_dict) == {"model", "family", "arch", "cores", "flags", "native_bf16"}
    assert as_dict["native_bf16"] == any(f in cpu.flags for f in ("avx512_bf16", "amx_bf16", "bf16"))
    assert isinstance(CpuInfo(model="x", flags=frozenset(), arch="x", cores=1).describe(), str)


def test_the_description_names_family_and_model_where_the_marketing_name_does_not() -> None:
    zen4 = parse_cpuinfo(EPYC_ZEN4, arch="x86_64", cores=2)
    assert zen4.family == "25/17" and zen4.native_bf16
    assert choose_dtype("auto", "cpu", zen4) == "bfloat16"
    assert zen4.describe().startswith("AMD EPYC (family 25 model 17, x86_64, 2 cores; ")
    assert zen4.as_dict()["family"] == "25/17"
    zen5 = parse_cpuinfo(EPYC_ZEN5, arch="x86_64", cores=2)
    assert zen5.family == "26/2" and zen5.native_bf16 and choose_dtype("auto", "cpu", zen5) == "bfloat16"
    assert zen5.describe().startswith("AMD EPYC (family 26 model 2, x86_64, 2 cores; ")
    assert "avx512_bf16" in zen5.relevant_flags and "amx_bf16" not in zen5.relevant_flags
    graviton = parse_cpuinfo(GRAVITON3, arch="aarch64", cores=2)  # Arm: no x86 family/model lines
    assert graviton.family == "" and graviton.describe().startswith(f"{graviton.model} (aarch64, 2 cores; ")
