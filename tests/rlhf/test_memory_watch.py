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
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time; x = bytearray(300 * 2**20); print(1, flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the 300 MiB are resident
        watch = MemoryWatch()
        sample = watch.sample()
        kinds = memory_breakdown_gib()
    finally:
        child.kill()
    assert sample["perf/peak_pipeline_rss_gb"] == sample["perf/pipeline_rss_gb"] >= 0.3
    assert kinds["ray: python"] >= 0.29 and set(kinds) == {"driver", "ray: python"}
    line = watch.report(tmp_path)
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert saved["peak_rss_gib"] == watch.peak_gib and saved["at_peak_pss_gib"]["ray: python"] >= 0.29
    assert line.startswith(f"peak resident memory of the pipeline: {watch.peak_gib:.2f} GiB") and "ray: python" in line
