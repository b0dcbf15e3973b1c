"""Run outputs: metrics.jsonl, optional trackers, console messages and progress bars,
phase timers.

Console: `say()` logs to the "rlhf" logger, which prints "[rlhf] message" lines on
stdout at INFO (the quiet default: nothing below INFO; other libraries' loggers are
left alone). `logging.getLogger("rlhf").setLevel(...)` or your own handlers change
that. Waits longer than a few seconds (role start-up, evaluation) show a tqdm bar on
stderr whose elapsed time ticks while the wait lasts.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("rlhf")


class PhaseTimer:
    """`with timer("generate"):` records timing/generate in seconds, and the phase's
    wall-clock span for the step timeline (rlhf.trace); `timer.span("eval")` only the span."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.spans: list[tuple[str, float, float]] = []  # (phase, start, end), time.time() seconds

    @contextmanager
    def __call__(self, phase: str, timing: bool = True):
        start, wall_start = time.perf_counter(), time.time()
        try:
            yield
        finally:
            self.spans.append((phase, wall_start, time.time()))
            if timing:
                self.times[f"timing/{phase}"] = self.times.get(f"timing/{phase}", 0.0) + time.perf_counter() - start

    def span(self, phase: str):
        """A phase on the timeline without a timing/ metric (evaluation, checkpoint: after the step's metrics)."""
        return self(phase, timing=False)

    def pop(self) -> dict[str, float]:
        out, self.times = self.times, {}
        return out

    def take_spans(self) -> list[tuple[str, float, float]]:
        out, self.spans = self.spans, []
        return out


def process_tree_rss_gb() -> float:
    """Resident memory of this process and all its descendants (GiB).

    With a locally started Ray every role (and vLLM's engine processes) descends
    from the driver, so this is the whole pipeline's footprint on the machine.
    """
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**30


def _process_kind(proc, me) -> str:
    """What a process of the pipeline is: the driver, a Ray actor by class (Ray titles
    them `ray::<Class>` or `ray::<Class>.<method>`), an idle pooled Ray worker, or one
    of Ray's own services (raylet, gcs_server, dashboard, ...)."""
    if proc.pid == me.pid:
        return "driver"
    cmdline = proc.cmdline()
    title = cmdline[0] if cmdline else proc.name()
    if title.startswith("ray::"):
        name = title[len("ray::"):].split(".")[0].split()[0]
        return "ray idle workers" if name == "IDLE" else name
    script = next((Path(arg).name for arg in cmdline[1:2] if arg.endswith(".py")), "")
    return f"ray: {script or Path(title.split()[0]).name}"


def memory_breakdown_gib() -> dict[str, float]:
    """The pipeline's memory by process kind (`_process_kind`), in GiB of proportional
    set size: pages shared by several processes (torch's libraries, Ray's object store
    mapping) are split between them, so the kinds add up to the machine's real use.
    Largest first."""
    import psutil

    me = psutil.Process()
    kinds: dict[str, float] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            kind, pss = _process_kind(proc, me), proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        kinds[kind] = kinds.get(kind, 0.0) + pss / 2**30
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


class MemoryWatch:
    """Per-step resident memory of the pipeline, and its breakdown by process at the
    peak (taken only when a step sets a new peak: reading every process's page map
    costs ~0.1 s)."""

    def __init__(self):
        self.peak_gib, self.at_peak = 0.0, {}

    def sample(self) -> dict[str, float]:
        rss = process_tree_rss_gb()
        if rss > self.peak_gib:
            self.peak_gib, self.at_peak = rss, memory_breakdown_gib()
        return {"perf/pipeline_rss_gb": rss, "perf/peak_pipeline_rss_gb": self.peak_gib}

    def report(self, run_dir: Path) -> str:
        """Write memory.json to the run directory; the console line saying where it went."""
        (run_dir / "memory.json").write_text(json.dumps(
            {"peak_rss_gib": self.peak_gib, "at_peak_pss_gib": self.at_peak}, indent=1))
        parts = ", ".join(f"{kind} {gib:.2f}" for kind, gib in self.at_peak.items() if gib >= 0.01)
        return f"peak resident memory of the pipeline: {self.peak_gib:.2f} GiB; at the peak (GiB, shared pages split): {parts}"


def _clean(value):
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


class MetricsLogger:
    """Appends one JSON object per step to metrics.jsonl and forwards to trackers.

    On resume from step k, lines of steps after k move to metrics.rolled_back.jsonl
    (they describe work the resumed run redoes), so metrics.jsonl reads as one
    uninterrupted run and no line is lost. A torn last line (killed mid-write) moves too.
    """

    ROLLED_BACK = "metrics.rolled_back.jsonl"

    def __init__(self, run_dir: Path, trackers: list[str], config: dict, resume_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._rewind(resume_step)
        config = json.loads(json.dumps(config, default=str))  # trackers take plain JSON values
        self.trackers = [make_tracker(name, run_dir, config) for name in trackers]

    def _rewind(self, resume_step: int) -> None:
        kept, moved = [], []
        for line in self.path.read_text().splitlines():
            if line.strip():
                (kept if _step_of(line) <= resume_step else moved).append(line)
        if moved:
            with open(self.path.parent / self.ROLLED_BACK, "a") as handle:
                handle.write("".join(line + "\n" for line in moved))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in sorted(metrics.items())}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def _step_of(line: str) -> float:
    """Step of a metrics line; a torn (unparsable) line counts as after every step."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def progress_line(step: int, total: int, metrics: dict) -> str:
    keys = [("reward", "rollout/reward_mean"), ("eval", "eval/reward_mean"), ("kl", "kl/mean"),
            ("len", "rollout/response_length"), ("clip", "actor/pg_clipfrac"), ("s/step", "timing/step")]
    shown = " ".join(f"{name}={metrics[key]:.3f}" for name, key in keys if key in metrics)
    width = 20
    done = int(width * step / max(total, 1))
    return f"[{'#' * done}{'.' * (width - done)}] step {step}/{total} {shown}"


class _StdoutHandler(logging.StreamHandler):
    """Writes to sys.stdout as it is at each record (pytest's capsys and
    contextlib.redirect_stdout replace it after this handler is made)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass


def _configure_console() -> None:
    if not log.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("[rlhf] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # a root handler (Ray's, vLLM's, a user's) would print it twice


_configure_console()


def say(message: str) -> None:
    """One console line, "[rlhf] message" (INFO on the "rlhf" logger)."""
    log.info(message)


@contextmanager
def progress(desc: str, total: int, unit: str = "it", tick_s: float = 1.0):
    """A tqdm bar on stderr for a wait of `total` units; redrawn every tick_s seconds so
    the elapsed time moves while one long unit (a role loading its model) lasts.
    Removed when done: the caller says what happened in one line."""
    bar = tqdm(total=total, desc=f"[rlhf] {desc}", unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(tick_s):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True, name="progress-tick")
    ticker.start()
    try:
        yield bar
    finally:
        done.set()
        ticker.join()
        bar.close()


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- trackers
# Each writes into the run directory unless told otherwise by its own environment
# (WANDB_MODE=offline, MLFLOW_TRACKING_URI, ...). Packages: the `trackers` extra.
class _TensorBoard:
    """Event files in <run_dir>/tensorboard (`tensorboard --logdir <run_dir>`)."""

    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step, metrics):
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self):
        self.writer.close()


class _WandB:
    """A W&B run named after the run directory, files in <run_dir>/wandb."""

    def __init__(self, run_dir: Path, config: dict):
        import wandb
        self.wandb = wandb
        self.run = wandb.init(project="rlhf", dir=str(run_dir), config=config, name=run_dir.name)

    def log(self, step, metrics):
        self.run.log(metrics, step=step)

    def close(self):
        self.run.finish()
        # finish() can return before wandb's service has written the run's log to disk
        # (seen offline with wandb 0.31: a 7-byte .wandb file); teardown waits for it.
        self.wandb.teardown()


class _MLflow:
    """An MLflow run in experiment "rlhf". Store: MLFLOW_TRACKING_URI if set, else a SQLite
    database <run_dir>/mlflow.db with artifacts in <run_dir>/mlartifacts (MLflow 3 refuses
    its old ./mlruns file store unless MLFLOW_ALLOW_FILE_STORE=true). Metric names use "."
    for "/" (actor.pg_loss)."""

    EXPERIMENT = "rlhf"

    def __init__(self, run_dir: Path, config: dict):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        exp = self.client.get_experiment_by_name(self.EXPERIMENT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            self.EXPERIMENT, artifact_location=None if os.environ.get("MLFLOW_TRACKING_URI")
            else (run_dir / "mlartifacts").resolve().as_uri())
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
        self.client.log_dict(self.run_id, config, "config.json")

    def log(self, step, metrics):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k.replace("/", "."), float(v), now, step)
                                                    for k, v in metrics.items()])

    def close(self):
        self.client.set_terminated(self.run_id)


TRACKERS = {"tensorboard": (_TensorBoard, "tensorboard"), "wandb": (_WandB, "wandb"),
            "mlflow": (_MLflow, "mlflow-skinny")}


def make_tracker(name: str, run_dir: Path, config: dict):
    if name not in TRACKERS:
        raise ValueError(f"config key 'run.trackers': unknown tracker {name!r}; choose from {sorted(TRACKERS)}")
    cls, package = TRACKERS[name]
    try:
        return cls(run_dir, config)
    except ImportError as err:
        raise RuntimeError(f"tracker {name!r} needs the '{package}' package ({err}): pip install -e '.[trackers]' "
                           f"installs every tracker (or remove it from run.trackers)") from None
