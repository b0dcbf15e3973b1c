"""workers.device: the dtype defaults follow the hardware (bf16 only where native)."""
from __future__ import annotations

import pytest
import torch

from workers import device as dev

# /proc/cpuinfo excerpts: an AVX2-only AMD EPYC (Zen 3) and an AVX-512 one with bf16 (Zen 4).
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx f16c avx2 fma bmi2\nbugs\t\t: sysret_ss_attrs\n"
ZEN4 = ZEN3.replace("bmi2", "bmi2 avx512f avx512bw avx512_bf16 avx512_vnni")
SAPPHIRE_RAPIDS = ZEN3.replace("bmi2", "bmi2 avx512f amx_tile amx_bf16 amx_int8")
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.fixture
def cpuinfo(monkeypatch, tmp_path):
    """Make device.py read this text as /proc/cpuinfo; forget the cached detection."""

    def use(text: str):
        fake = tmp_path / "cpuinfo"
        fake.write_text(text)
        monkeypatch.setattr(dev, "CPUINFO", str(fake))
        monkeypatch.setenv("RLHF_DEVICE", "cpu")
        dev.detect.cache_clear()

    yield use
    dev.detect.cache_clear()


@pytest.mark.parametrize("text, native", [(ZEN3, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True), (ARM_BF16, True)])
def test_dtype_defaults_follow_the_cpu_flags(cpuinfo, text, native):
    cpuinfo(text)
    assert dev.detect().supports_bf16 is native
    want = torch.bfloat16 if native else torch.float32
    assert dev.trainer_dtype("auto") == want
    assert dev.rollout_dtype("auto") == str(want).removeprefix("torch.")


def test_flags_are_whole_words(cpuinfo):
    # "avx512_bf16" must not be found inside another word, nor in the "bugs" line.
    cpuinfo(ZEN3.replace("sysret_ss_attrs", "sysret_ss_attrs xavx512_bf16x amx_bf16_bug"))
    assert not dev.detect().supports_bf16


def test_explicit_dtypes_win_over_the_hardware():
    zen3 = dev.Device("cpu", "gloo", "shm", supports_bf16=False)
    gpu = dev.Device("cuda", "nccl", "cuda_ipc", supports_bf16=True)
    assert dev.rollout_dtype("auto", gpu) == "bfloat16"
    assert dev.rollout_dtype("bf16", zen3) == "bfloat16" and dev.rollout_dtype("fp32", gpu) == "float32"
    assert dev.rollout_dtype("float16", zen3) == "float16"
    assert dev.trainer_dtype("bf16", zen3) == torch.bfloat16 and dev.trainer_dtype("fp32", gpu) == torch.float32


def test_this_machine_matches_torch():
    """The flags we read agree with torch's own probe of native bf16 (x86)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps.get("architecture") != "x86_64":
        pytest.skip("torch reports bf16 capabilities per flag on x86 only")
    torch_native = bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    assert dev._cpu_has_bf16() is torch_native
