"""GPU weight sync by vLLM's weight-transfer engines: the pure logic (engine choice per
layout, bucket plan, pipelining order, the control-plane client) on CPU. The data
plane (NCCL broadcast, CUDA IPC) needs a GPU and is not run here."""
from __future__ import annotations

import base64
import pickle

import pytest
import torch

from workers import vllm_transfer as vt
from workers.weight_sync import InFlight, choose_sync


@pytest.mark.parametrize("placement, transport, rollout_gpus, actor_gpus, backend", [
    ("colocated", "auto", 0.4, 0.4, "ipc"),            # hybrid engine
    ("colocated", "auto", 1.0, 1.0, "nccl"),           # colocated, own GPUs
    ("split", "auto", 0.4, 0.4, "nccl"),               # fractions, but separate bundles
    ("colocated", "auto", 0.4, 0.0, "nccl"),           # CPU actor: ipc impossible
    ("colocated", "process_group", 0.4, 0.4, "nccl"),  # asked for
    ("colocated", "shm", 0.4, 0.4, None),              # host memory: our transport
    ("colocated", "auto", 0.0, 0.0, None),             # CPU engines
])
def test_engine_backend_per_layout(placement, transport, rollout_gpus, actor_gpus, backend):
    assert vt.engine_backend(placement, transport, rollout_gpus, actor_gpus) == backend


def test_sync_backend_must_match_the_engines_backend():
    assert vt.backend_for("cuda_ipc", ["ipc", "ipc"], True) == "ipc"
    assert vt.backend_for("process_group", ["nccl"], True) == "nccl"
    assert vt.backend_for("shm", ["ipc"], True) is None and vt.backend_for("shm", [None], False) is None
    assert vt.backend_for("process_group", [None, None], False) is None  # CPU nodes: our gloo group
    with pytest.raises(RuntimeError, match=r"devices call for process_group \(vLLM backend 'nccl'\) .* \['ipc'\]"):
        vt.backend_for("process_group", ["ipc"], True)
    with pytest.raises(RuntimeError, match="cuda_ipc between GPUs needs the rollout engines started"):
        vt.backend_for("cuda_ipc", [None], True)


def test_buffer_fits_the_largest_tensor():
    mib = 1 << 20
    # a 7B model's embedding (152064 x 3584 bf16, ~1 GiB) against 256 MiB buckets
    assert vt.buffer_bytes([152064 * 3584 * 2, 3584 * 2, 18944 * 3584 * 2], 256 * mib) == 152064 * 3584 * 2
    assert vt.buffer_bytes([mib, 2 * mib], 256 * mib) == 256 * mib


def test_packed_chunks_cut_as_vllm_producers_cut():
    sizes = [40, 40, 40, 100, 10]
    # nccl: a bucket closes once it exceeds the buffer (pack_tensors)
    assert vt.packed_chunks(sizes, 100, "nccl") == [[0, 1, 2], [3, 4]]
    # ipc: a tensor that would overflow the buffer starts the next one (packed_ipc_producer)
    assert vt.packed_chunks(sizes, 100, "ipc") == [[0, 1], [2], [3], [4]]


def test_trainer_init_info_carries_the_wire_params():
    info = vt.trainer_init_info("nccl", rank=0, buffer=512, world_size=3, host="10.0.0.1", port=2345)
    assert (info.backend, info.is_sender, info.world_size, info.packed, info.packed_buffer_size_bytes,
            info.packed_num_buffers) == ("nccl", True, 3, True, 512, vt.NCCL_NUM_BUFFERS)
    info = vt.trainer_init_info("ipc", rank=1, buffer=512)
    assert (info.backend, info.is_sender, info.packed, info.packed_buffer_size_bytes) == ("ipc", False, True, 512)
    with pytest.raises(ValueError, match="unknown vLLM weight-transfer backend 'gloo'"):
        vt.trainer_init_info("gloo", rank=0, buffer=1)


def test_ipc_handles_travel_pickled():
    handles = {"GPU-U1": (torch.Tensor, (2, 3), torch.bfloat16, b"\x00\x01")}
    out = vt.pickled_ipc({"names": ["w"], "ipc_handles": handles, "tensor_sizes": [12]})
    assert "ipc_handles" not in out and out["names"] == ["w"] and out["tensor_sizes"] == [12]
    assert pickle.loads(base64.b64decode(out["ipc_handles_pickled"])) == handles
    assert vt.pickled_ipc({"names": ["w"]}) == {"names": ["w"]}


class _Handle:
    def __init__(self, calls):
        self.calls = calls
        outer = self

        class _Method:
            def remote(self, method, payload):
                outer.calls.append((id(outer), method, payload))
                return None
        self.vllm_weight_update = _Method()


def test_client_gives_each_engine_its_nccl_rank_offset(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda refs: refs)
    calls = []
    a, b = _Handle(calls), _Handle(calls)
    client = vt.RolloutClient([a, b], [1, 3])  # engine a: 2 TP workers (ranks 1, 2), engine b: rank 3
    client.init_weight_transfer_engine({"master_address": "h", "master_port": 1, "rank_offset": 1, "world_size": 4})
    assert [(p["rank_offset"], p["world_size"]) for _, _, p in calls] == [(1, 4), (3, 4)]
    calls.clear()
    client.start_weight_update()
    client.update_weights({"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2]]})
    client.finish_weight_update()
    assert [m for _, m, _ in calls] == ["start_weight_update"] * 2 + ["update_weights"] * 2 + ["finish_weight_update"] * 2


def test_weight_source_declares_what_it_yields():
    pytest.importorskip("vllm")
    metas = [("w", (2, 3)), ("b", (3,))]
    params = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    source = vt.weight_source(metas, lambda: iter(params.items()), torch.bfloat16, torch.device("cpu"), copy=True)
    declared = [(m.name, m.dtype, m.shape) for m in source.metadata()]
    got = [(n, t.dtype, tuple(t.shape)) for n, t in source]
    assert declared == got == [("w", torch.bfloat16, (2, 3)), ("b", torch.bfloat16, (3,))]
    # copy=True: a yielded tensor never aliases the trainer's (ZeRO-3 frees gathered params)
    same = vt.weight_source(metas, lambda: iter(params.items()), torch.float32, torch.device("cpu"), copy=True)
    assert all(t.data_ptr() != params[n].data_ptr() for n, t in same)
    # and the groups vLLM derives from the metadata cover every tensor
    assert sum(len(g) for g in source.groups()) == 2


def test_module_metas_read_full_shapes_without_gathering():
    m = torch.nn.Linear(4, 3)
    m.weight.ds_shape = torch.Size([3, 4])  # a ZeRO-3 partitioned param reports its full shape there
    m.weight.data = torch.empty(0)
    assert vt.module_metas(m) == [("weight", (3, 4)), ("bias", (3,))]


def test_in_flight_window_packs_ahead_and_waits_oldest_first():
    events = []
    window = InFlight(2, lambda refs: events.append(("wait", refs)))
    for k in range(5):
        events.append(("sent", k))
        window.add(k)
    window.drain()
    assert events == [("sent", 0), ("sent", 1), ("sent", 2), ("wait", 0), ("sent", 3), ("wait", 1),
                      ("sent", 4), ("wait", 2), ("wait", 3), ("wait", 4)]
    with pytest.raises(ValueError, match="depth must be >= 1"):
        InFlight(0, print)


def _cuda(node, gpu):
    return {"node_id": node, "kind": "cuda", "gpu": gpu}


def test_sync_choice_per_pair_with_fake_devices():
    from workers.device import DeviceReport

    hybrid = [{"dtype": "bfloat16", "devices": [_cuda("n", "GPU-A")]}, {"dtype": "bfloat16", "devices": [_cuda("n", "GPU-B")]}]
    ranks = [DeviceReport("n", "cuda", "GPU-A"), DeviceReport("n", "cuda", "GPU-B")]
    assert choose_sync(hybrid, "auto", "auto", ranks) == (torch.bfloat16, "cuda_ipc")
    assert choose_sync(hybrid, "auto", "auto", ranks[:1]) == (torch.bfloat16, "process_group")
    assert choose_sync(hybrid, "shm", "fp32", ranks) == (torch.float32, "shm")
    with pytest.raises(RuntimeError, match="disagree on their dtype"):
        choose_sync([*hybrid, {"dtype": "float32", "devices": []}], "auto", "auto", ranks)
