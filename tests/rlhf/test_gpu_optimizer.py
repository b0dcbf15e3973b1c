"""The trainers' AdamW needs no DeepSpeed op compiled at run time (FusedAdam / CPUAdam
JIT-compile at the first step unless prebuilt): the choice per device, and that
DeepSpeed hands torch's fused AdamW the config we write. No GPU needed."""
import pytest
import torch

from rlhf.config.schema import TrainerSection
from workers import device as dev
from workers.trainer_base import deepspeed_config

NONE = {"cpu_adam": False, "fused_adam": False}
ALL = {"cpu_adam": True, "fused_adam": True}


@pytest.mark.parametrize("gpu, offload, prebuilt, name", [
    (True, False, NONE, "torch_fused_adamw"),       # the usual GPU node: pip wheel, no nvcc
    (True, False, ALL, "deepspeed_fused_adam"),     # DS_BUILD_FUSED_ADAM=1 install
    (True, True, NONE, "torch_adamw"),              # ZeRO-Offload without a prebuilt CPUAdam
    (True, True, ALL, "deepspeed_cpu_adam"),
    (False, False, ALL, "torch_adamw"),             # CPU: as before
    (False, True, NONE, "torch_adamw"),
])
def test_adam_choice_never_needs_a_jit_build(gpu, offload, prebuilt, name):
    chosen, params, config = dev.adam_choice(gpu, offload, prebuilt)
    assert chosen == name
    # DeepSpeed's own ops only when their prebuilt flag says so
    assert params["torch_adam"] == (not name.startswith("deepspeed_"))
    assert params.get("fused", False) == (name == "torch_fused_adamw")
    assert config == ({"zero_force_ds_cpu_optimizer": False} if offload and name == "torch_adamw" else {})


def test_gpu_deepspeed_config_asks_for_torch_fused_adamw_and_deepspeed_builds_it(monkeypatch):
    from deepspeed.runtime.engine import DeepSpeedEngine

    monkeypatch.setattr(dev, "prebuilt_deepspeed_ops", lambda: dict(NONE))
    gpu = dev.Device("cuda", "nccl", "cuda_ipc", True)
    cfg = deepspeed_config(TrainerSection(lr=1e-5, zero_stage=2), micro_batch_size=4, grad_accum=1, world_size=1,
                           bf16=True, device=gpu)
    params = dict(cfg["optimizer"]["params"])
    assert params["torch_adam"] is True and params["fused"] is True
    # DeepSpeed's own branch for this config (`self` is unused on the torch_adam path)
    cls, extra = DeepSpeedEngine.get_optimizer_configuration(None, params, True)
    assert cls is torch.optim.AdamW
    w = torch.nn.Parameter(torch.ones(3))
    opt = cls([w], **params, **extra)  # torch's fused kernel also exists on CPU: built here for real
    assert opt.defaults["fused"] is True
    w.grad = torch.ones(3)
    opt.step()
    assert torch.all(w < 1)
    cpu = deepspeed_config(TrainerSection(lr=1e-5), micro_batch_size=4, grad_accum=1, world_size=1, bf16=False,
                           device=dev.Device("cpu", "gloo", "shm", False))
    assert cpu["optimizer"]["params"]["torch_adam"] is True and "fused" not in cpu["optimizer"]["params"]
