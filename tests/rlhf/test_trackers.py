"""MetricsLogger with each tracker for real (packages from the `trackers` extra, which
scripts/setup.sh installs), then read back what the tracker wrote: TensorBoard event
files, the W&B offline run's transaction log, MLflow's store through its client."""
import json
import struct
import sys

import pytest

from rlhf.metrics import MetricsLogger

STEPS = {1: {"actor/pg_loss": 0.5, "rollout/reward_mean": 0.25},
         2: {"actor/pg_loss": -0.125, "rollout/reward_mean": 0.375},
         3: {"actor/pg_loss": 0.0625, "rollout/reward_mean": 0.75}}
CONFIG = {"algorithm": {"adv_estimator": "gae"}, "actor": {"lr": 1e-6}}


def log_steps(run_dir, tracker: str) -> None:
    logger = MetricsLogger(run_dir, [tracker], CONFIG)
    for step, metrics in STEPS.items():
        logger.log(step, metrics)
    logger.close()


def expected(key: str) -> list[tuple[int, float]]:
    return [(step, m[key]) for step, m in STEPS.items()]


def test_tensorboard_event_files_hold_every_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_steps(tmp_path, "tensorboard")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in STEPS[1]:
        assert [(e.step, e.value) for e in events.Scalars(key)] == expected(key)  # all values exact in float32


def wandb_records(path):
    """Records of a .wandb transaction log: a 7-byte header (":W&B", magic 0xBEE1, version),
    then LevelDB-log-style 32 KiB blocks of chunks (crc32c u32, length u16, type u8;
    types full=1, first=2, middle=3, last=4). wandb 0.31 dropped its Python reader."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_every_step_and_the_config(tmp_path, monkeypatch):
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "cfg",
                       "WANDB_CACHE_DIR": tmp_path / "cache", "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(var, str(value))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log_steps(run_dir, "wandb")
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    history, config, names, kinds = {}, {}, [], []
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        kinds.append(kind)
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[row.pop("_step")] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind in ("run", "config"):  # the run record carries the initial config
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
            names += [record.run.display_name] if kind == "run" else []
    assert history == STEPS, (kinds, log.stat().st_size)
    assert config["algorithm"] == CONFIG["algorithm"] and config["actor"] == CONFIG["actor"]
    assert names and set(names) == {"run"}


def test_mlflow_local_store_holds_every_step_and_the_config(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log_steps(run_dir, "mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    for key in STEPS[1]:
        history = client.get_metric_history(run.info.run_id, key.replace("/", "."))
        assert sorted((m.step, m.value) for m in history) == expected(key)
    config_path = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    assert json.loads(open(config_path).read()) == CONFIG
    assert (run_dir / "mlartifacts").is_dir()  # artifacts stay in the run directory, not ./mlruns


@pytest.mark.parametrize("tracker,package", [("wandb", "wandb"), ("mlflow", "mlflow-skinny"),
                                             ("tensorboard", "tensorboard")])
def test_missing_tracker_package_names_the_extra(tmp_path, monkeypatch, tracker, package):
    blocked = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "torch.utils.tensorboard"}[tracker]
    for name in [blocked, *(m for m in sys.modules if m.startswith(blocked + "."))]:
        monkeypatch.setitem(sys.modules, name, None)  # `import` of it (or a submodule) raises ImportError
    with pytest.raises(RuntimeError, match=rf"tracker '{tracker}' needs the '{package}' package.*\[trackers\]"):
        MetricsLogger(tmp_path, [tracker], CONFIG)


def test_unknown_tracker_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"run.trackers.*'neptune'"):
        MetricsLogger(tmp_path, ["neptune"], CONFIG)
