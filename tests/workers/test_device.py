"""workers.device: the dtype defaults follow the hardware (bf16 only where native); each worker
decides its own device; the weight transport follows the physical devices."""
from __future__ import annotations

import os

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


# ------------------------------------------------------------------ who decides the device
def never(*_):
    raise AssertionError("torch must not be asked")


@pytest.mark.parametrize("forced, granted, cuda, kind", [
    (None, None, True, "cuda"),      # no Ray worker (a driver, a plain process): torch decides
    (None, None, False, "cpu"),
    (None, [], True, "cpu"),         # a Ray worker given no GPU, on a GPU node: CPU
    (None, ["3"], True, "cuda"),     # a Ray worker given GPU 3
    ("cpu", ["3"], True, "cpu"),     # RLHF_DEVICE wins
    ("cuda", [], False, "cuda"),
])
def test_device_kind_follows_what_ray_granted(forced, granted, cuda, kind):
    assert dev.device_kind(forced, granted, lambda: cuda) == kind


def test_device_kind_refuses_a_granted_gpu_torch_cannot_see():
    with pytest.raises(RuntimeError, match="Ray gave this worker GPU.s. 0,1 but torch sees no CUDA"):
        dev.device_kind(None, ["0", "1"], lambda: False)
    with pytest.raises(RuntimeError, match="RLHF_DEVICE must be cpu or cuda"):
        dev.device_kind("gpu", None, never)


def test_outside_ray_no_gpu_ids():
    assert dev.ray_gpu_ids() is None  # this test process is no Ray worker


def test_setup_process_env_is_the_workers_own(monkeypatch):
    cpu = dev.Device("cpu", "gloo", "shm", supports_bf16=False)
    gpu = dev.Device("cuda", "nccl", "cuda_ipc", supports_bf16=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # a CPU role inherits the node's GPUs
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    assert dev.setup_process_env(cpu) is cpu
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and os.environ["DS_ACCELERATOR"] == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # what Ray gave a GPU role: kept
    dev.setup_process_env(gpu)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2" and os.environ["DS_ACCELERATOR"] == "cuda"


def test_ray_asks_come_from_the_config_alone(monkeypatch):
    monkeypatch.setenv("RLHF_DEVICE", "cpu")  # the driver's device does not matter
    dev.detect.cache_clear()
    try:
        assert dev.ray_resources(0.5, 1.0) == {"num_cpus": 0.5, "num_gpus": 1.0}
    finally:
        dev.detect.cache_clear()


def test_engine_defaults_per_device():
    cpu = dev.Device("cpu", "gloo", "shm", supports_bf16=False)
    gpu = dev.Device("cuda", "nccl", "cuda_ipc", supports_bf16=True)
    assert dev.enforce_eager(None, cpu) is True and dev.enforce_eager(None, gpu) is False  # CUDA graphs
    assert dev.enforce_eager(True, gpu) is True and dev.enforce_eager(False, cpu) is False
    assert dev.vllm_engine_kwargs(gpu, tensor_parallel_size=1) == {}
    # inside a placement group vLLM would otherwise start its Ray executor and ask Ray for GPUs
    assert dev.vllm_engine_kwargs(gpu, tensor_parallel_size=2) == {"distributed_executor_backend": "mp"}
    with pytest.raises(ValueError, match="tensor_parallel_size > 1 needs GPUs"):
        dev.vllm_engine_kwargs(cpu, tensor_parallel_size=2)


# ------------------------------------------------------------------ weight transport choice
def cuda(node, gpu):
    return dev.DeviceReport(node, "cuda", gpu)


def cpu(node):
    return dev.DeviceReport(node, "cpu")


@pytest.mark.parametrize("sender, receivers, transport", [
    # hybrid engine: trainer rank 0 and the engine share physical GPU U1
    (cuda("a", "GPU-U1"), [cuda("a", "GPU-U1")], "cuda_ipc"),
    # same node, different GPUs (Ray narrowed each to its own): the engine cannot open U1
    (cuda("a", "GPU-U1"), [cuda("a", "GPU-U2")], "process_group"),
    # one engine shares the GPU, a second does not: one transport for all
    (cuda("a", "GPU-U1"), [cuda("a", "GPU-U1"), cuda("a", "GPU-U2")], "process_group"),
    # tensor parallel engine: its 2 ranks on 2 GPUs
    (cuda("a", "GPU-U1"), [cuda("a", "GPU-U1"), cuda("a", "GPU-U3")], "process_group"),
    # other node
    (cuda("a", "GPU-U1"), [cuda("b", "GPU-U5")], "process_group"),
    # node-numbered names only match on one node ("node-gpu-0" of node a is not of node b)
    (cuda("a", "node-gpu-0"), [cuda("b", "node-gpu-0")], "process_group"),
    (cpu("a"), [cpu("a"), cpu("a")], "shm"),
    (cpu("a"), [cpu("b")], "process_group"),           # gloo
    (cuda("a", "GPU-U1"), [cpu("a")], "shm"),          # a CPU side: host memory on one node
    (cpu("a"), [cuda("a", "GPU-U1")], "shm"),
])
def test_transport_choice(sender, receivers, transport):
    assert dev.choose_transport(sender, receivers) == transport


@pytest.mark.parametrize("senders, receivers, transport", [
    # hybrid engine, 2 GPUs: engine i shares GPU i with actor rank i, each rank hands its copy
    ([cuda("a", "GPU-U1"), cuda("a", "GPU-U2")], [cuda("a", "GPU-U1"), cuda("a", "GPU-U2")], "cuda_ipc"),
    # an engine on a GPU no actor rank holds
    ([cuda("a", "GPU-U1"), cuda("a", "GPU-U2")], [cuda("a", "GPU-U1"), cuda("a", "GPU-U3")], "process_group"),
    # the same UUID name seen from another node is another device
    ([cuda("a", "node-gpu-0"), cuda("b", "node-gpu-1")], [cuda("b", "node-gpu-0")], "process_group"),
    ([cuda("a", "GPU-U1"), cuda("b", "GPU-U5")], [cuda("b", "GPU-U5")], "cuda_ipc"),
])
def test_transport_choice_with_every_actor_rank_sending(senders, receivers, transport):
    assert dev.choose_transport(senders, receivers) == transport


def test_transport_choice_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="CPU and GPU processes on different nodes"):
        dev.choose_transport(cpu("a"), [cuda("b", "GPU-U1")])
    with pytest.raises(ValueError, match="no receiving process"):
        dev.choose_transport(cpu("a"), [])


def test_physical_gpu_names_survive_relabelling(monkeypatch):
    """Without a CUDA driver (fake-GPU Ray sessions) a GPU is named by the node's
    numbering: device 0 of a process seeing "5" and device 1 of one seeing "4,5" are one GPU."""
    if torch.cuda.is_available():
        pytest.skip("names are UUIDs where CUDA answers")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    alone = dev.physical_gpu(0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert dev.physical_gpu(1) == alone and dev.physical_gpu(0) != alone
    with pytest.raises(RuntimeError, match="CUDA device 2 is not visible"):
        dev.physical_gpu(2)
    assert dev.device_report("n", torch.device("cpu")) == dev.DeviceReport("n", "cpu")
