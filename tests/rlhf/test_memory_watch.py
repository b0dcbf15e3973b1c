"""The pipeline's memory by process kind, and the breakdown kept at the peak."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from rlhf.metrics import MemoryWatch, _process_kind, memory_breakdown_gib


def fake_proc(pid, cmdline, name="python"):
    return SimpleNamespace(pid=pid, cmdline=lambda: cmdline, name=lambda: name)


@pytest.mark.parametrize("cmdline,kind", [
    (["ray::RolloutWorker.generate"], "RolloutWorker"),
    (["ray::ActorWorker"], "ActorWorker"),
    (["ray::IDLE"], "ray idle workers"),
    (["/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet", "--node_id=1"], "ray: raylet"),
    (["/venv/bin/python", "/venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py", "--x"], "ray: dashboard.py"),
    ([], "ray: gcs_server"),
])
def test_processes_are_named_by_kind(cmdline, kind):
    me = fake_proc(1, ["python", "-m", "rlhf.cli"])
    assert _process_kind(fake_proc(2, cmdline, name="gcs_server"), me) == kind
    assert _process_kind(me, me) == "driver"


def test_a_child_holding_memory_shows_in_the_breakdown_and_peak(tmp_path):
    """Named by its script (other children, e.g. a test session's Ray, may run beside it)."""
    holder = tmp_path / "holder.py"
    holder.write_text("import time\nx = bytearray(300 * 2**20)\nprint(1, flush=True)\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the 300 MiB are resident
        watch = MemoryWatch()
        sample = watch.sample()
        kinds = memory_breakdown_gib()
    finally:
        child.kill()
    assert sample["perf/peak_pipeline_rss_gb"] == sample["perf/pipeline_rss_gb"] >= 0.3
    assert kinds["ray: holder.py"] >= 0.29 and "driver" in kinds
    line = watch.report(tmp_path)
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert saved["peak_rss_gib"] == watch.peak_gib and saved["at_peak_pss_gib"]["ray: holder.py"] >= 0.29
    assert line.startswith(f"peak resident memory of the pipeline: {watch.peak_gib:.2f} GiB") and "ray: holder.py" in line
