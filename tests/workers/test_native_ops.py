"""DeepSpeed ops live in the environment's own folder and are built before a run needs them."""
import os
import sys

from workers import device as dev
from workers import native_ops


def test_workers_use_the_environments_extensions_folder(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    dev.setup_process_env(dev.Device("cpu", "gloo", "shm", False))
    assert os.environ["TORCH_EXTENSIONS_DIR"] == os.path.join(sys.prefix, "torch_extensions")


def test_a_users_extensions_folder_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    dev.setup_process_env(dev.Device("cpu", "gloo", "shm", False))
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path)


def test_setup_built_the_cpu_ops_into_the_environment(monkeypatch):
    """scripts/setup.sh ran `python -m workers.native_ops`: loading finds the build."""
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    built = native_ops.prebuild("cpu")
    assert [name for name, _ in built] == ["deepspeed_shm_comm"]
    folder = os.path.join(native_ops.extensions_dir(), "deepspeed_shm_comm")
    assert os.path.exists(os.path.join(folder, "deepspeed_shm_comm.so")), folder
    assert native_ops.prebuild("cuda") == []
