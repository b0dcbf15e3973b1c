"""The bare DeepSpeed side of bench_train.py: a plain policy-gradient loop on the
same tokens, ZeRO config and micro-batches as our actor's update, in a plain process
(no Ray, no worker classes). Run by bench_train.py; prints one JSON line.

    python scripts/bench/bare_deepspeed.py <work_dir>   # reads batch.pt and setup.json there
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch


def main(work_dir: str) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29731"),
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    from transformers import AutoModelForCausalLM

    setup = json.load(open(os.path.join(work_dir, "setup.json")))
    data = torch.load(os.path.join(work_dir, "batch.pt"))
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    model = AutoModelForCausalLM.from_pretrained(setup["model_path"], dtype=torch.float32)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=setup["ds_config"])
    micro = setup["ds_config"]["train_micro_batch_size_per_gpu"]
    dtype = torch.bfloat16 if setup["ds_config"]["bf16"]["enabled"] else torch.float32
    seconds = []
    for _ in range(setup["repeats"] + 1):  # the first update warms up
        t0 = time.perf_counter()
        update(engine, data, micro, dtype)
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": seconds[1:], "warmup_seconds": seconds[0], "torch_threads": torch.get_num_threads()}))


def update(engine, data: dict, micro: int, dtype: torch.dtype) -> None:
    """One optimizer step per `engine`'s train batch: forward, token log-probs of the
    response, importance-weighted advantage loss, backward, step."""
    R = data["response_mask"].shape[1]
    n_tokens = data["response_mask"].sum()
    for i in range(0, data["input_ids"].shape[0], micro):
        mb = {k: v[i:i + micro] for k, v in data.items()}
        logits = engine(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                        position_ids=mb["position_ids"], use_cache=False, logits_to_keep=R + 1).logits[:, :-1]
        logprobs = logits.float().log_softmax(-1).gather(-1, mb["input_ids"][:, -R:, None]).squeeze(-1)
        ratio = (logprobs - mb["old_logprobs"]).exp()
        loss = -(ratio * mb["advantages"] * mb["response_mask"]).sum() / n_tokens
        engine.backward(loss)
        engine.step()


if __name__ == "__main__":
    main(sys.argv[1])
