"""Run untrusted code (what a policy wrote) in a separate, limited process.

`run_sandboxed(code, ...)` starts `python -I` of this interpreter per call, in a new
session, in a fresh scratch directory (removed afterwards), with a minimal environment
(no inherited variables: no tokens or keys), and returns a `SandboxResult`; it never raises
and never leaves a process or a directory behind. The child side is `_sandbox_child.py`.

What is enforced (`sandbox_guarantees()` says which of these this machine gives):
- Always: wall-clock timeout; RLIMIT_CPU (per process), RLIMIT_AS (memory), RLIMIT_NPROC
  (fork bombs), RLIMIT_FSIZE (per file), RLIMIT_NOFILE, no core files; stdout and stderr
  read up to `max_output_chars` each, the process killed on overflow.
- Where unprivileged user namespaces are allowed (Linux, this machine): new user, network
  and pid namespaces. No network at all (only a down loopback); the code's processes are
  all killed with the namespace's init, even ones that left the session; it cannot see or
  signal other processes; RLIMIT_NPROC counts only the sandbox's processes.
- Where Landlock is available (Linux >= 5.13 with the LSM enabled; ABI 7 here): the kernel
  refuses writes, creations, removals and renames outside the scratch directory (and
  /dev/null), for the code and every program it starts; with ABI >= 4 also TCP bind/connect,
  with ABI >= 6 signals and abstract unix sockets leaving the sandbox.
- When the caller is root (this machine): the code runs as `nobody` keeping only
  CAP_DAC_READ_SEARCH (root ignores RLIMIT_NPROC; the interpreter may live under /root),
  in pid + net namespaces made without a user namespace; reads stay as root's.
- Where either is missing: Python audit hooks in the child block what the kernel does not
  (socket creation/connect/bind; file writes outside the scratch dir; starting programs and
  ctypes, which would leave the hooks behind). Weaker: native code in extension modules
  makes its own syscalls, and processes that call setsid() escape the final group kill.
Not restricted anywhere: reading files the user can read (the interpreter needs its
libraries); the total size of the scratch directory (only each file's size is capped).
"""
from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
_MAX_CODE_CHARS = 1_000_000
_STOP_GRACE_S = 3.0  # after SIGTERM, how long the supervisor gets to empty the namespace
_POLL_S = 0.05


@dataclass(frozen=True)
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None  # the code's exit status; -N when killed by signal N; None if never finished
    error: str | None      # one line naming what went wrong (None: exited 0 within every limit)
    timed_out: bool
    seconds: float


def run_sandboxed(code: str, *, timeout_s: float, cpu_s: float, memory_mb: int, max_output_chars: int,
                  network: bool = False, max_processes: int = 32, max_file_mb: int = 64,
                  max_open_files: int = 128, kernel_isolation: bool = True) -> SandboxResult:
    """Run `code` (Python source) in a sandboxed process; see the module docstring.

    `kernel_isolation=False` uses only the audit-hook fallback (what platforms without
    namespaces and Landlock get), to test it.
    """
    start = time.monotonic()
    try:
        result, _ = _execute(code, start, dict(
            timeout_s=float(timeout_s), cpu_s=max(1, int(-(-cpu_s // 1))), memory_mb=int(memory_mb),
            max_output_chars=int(max_output_chars), network=bool(network), max_processes=int(max_processes),
            max_file_mb=int(max_file_mb), max_open_files=int(max_open_files), kernel_isolation=kernel_isolation))
        return result
    except Exception as exc:  # noqa: BLE001 - the contract is: never raise
        return SandboxResult("", "", None, f"sandbox failed: {type(exc).__name__}: {exc}", False,
                             time.monotonic() - start)


@functools.lru_cache(maxsize=1)
def sandbox_guarantees() -> dict:
    """What the sandbox enforces on this machine (probed once by running an empty program)."""
    _, status = _execute("", time.monotonic(), dict(
        timeout_s=30.0, cpu_s=10, memory_mb=512, max_output_chars=1000, network=False, max_processes=8,
        max_file_mb=1, max_open_files=64, kernel_isolation=True))
    status = status or {}
    ns, abi = bool(status.get("namespaces")), int(status.get("landlock", 0))
    if status.get("own_userns"):
        nproc = "RLIMIT_NPROC counts only the sandbox's processes (own user namespace)"
    elif status.get("dropped_root"):
        nproc = "runs as nobody (+ CAP_DAC_READ_SEARCH: reads as root); RLIMIT_NPROC counts nobody's processes"
    elif status.get("root"):
        nproc = "runs as root: RLIMIT_NPROC is NOT enforced (root could not drop to nobody)"
    else:
        nproc = "RLIMIT_NPROC over all of this user's processes + the sandbox's budget"
    return {
        "namespaces": ns,
        "landlock_abi": abi,
        "process_limit": nproc,
        "network": "blocked: new network namespace, only a down loopback" if ns
        else "audit hook blocks sockets in the Python interpreter only (weaker: native code can bypass it)",
        "file_writes": f"Landlock ABI {abi}: the kernel allows writes only under the scratch dir and /dev/null" if abi
        else "audit hook blocks writes outside the scratch dir in the Python interpreter only (weaker)",
        "processes": "pid namespace: all processes die with the call, none outside it can be seen or signalled" if ns
        else "process-group kill (processes that call setsid() can outlive the call)",
        "limits": "wall-clock timeout, RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, no core files",
        "environment": "minimal (PATH, HOME/TMPDIR = scratch dir, C.UTF-8 locale)",
        "not_restricted": "reading files the user can read; total size of the scratch dir",
    }


# ---------------------------------------------------------------------------- one call


def _execute(code, start, lim):
    """(SandboxResult, the child's status dict or None)."""
    if not isinstance(code, str):
        return SandboxResult("", "", None, f"code must be a string, not {type(code).__name__}", False, 0.0), None
    if len(code) > _MAX_CODE_CHARS:
        return SandboxResult("", "", None, f"code too long ({len(code)} chars > {_MAX_CODE_CHARS})", False, 0.0), None
    if lim["timeout_s"] <= 0 or lim["memory_mb"] <= 0 or lim["max_output_chars"] < 0:
        return SandboxResult("", "", None, "sandbox limits must be positive", False, 0.0), None
    scratch = tempfile.mkdtemp(prefix="rlhf-sandbox-")
    try:
        if os.geteuid() == 0:  # the child runs as nobody (see _sandbox_child.drop_root)
            os.chown(scratch, *_nobody())
        return _run_in(scratch, code, start, lim)
    finally:
        _remove_tree(scratch)


def _run_in(scratch, code, start, lim):
    status_r, status_w = os.pipe()
    cfg = dict(lim, scratch=scratch, status_fd=status_w, parent_pid=os.getpid(), run_as=_nobody())
    try:
        proc = subprocess.Popen([sys.executable, "-I", _CHILD, json.dumps(cfg)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
                                cwd=scratch, env=_minimal_env(scratch), start_new_session=True)
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    capture = _Capture(proc, lim["max_output_chars"])
    stop_reason = None
    try:
        _feed(proc, code)
        stop_reason = capture.collect(start + lim["timeout_s"])
    finally:
        _end(proc, stop=stop_reason is not None or sys.exc_info()[0] is not None)
        status = _read_status(status_r)
        capture.close()
    result = _result(capture, status, stop_reason, lim, time.monotonic() - start, proc.returncode)
    return result, status


def _nobody():
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def _minimal_env(scratch):
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch,
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "RLHF_SANDBOX": "1",
            # one thread per numerical library: threads count against RLIMIT_NPROC and RLIMIT_AS
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _feed(proc, code):
    try:
        proc.stdin.write(code.encode("utf-8", errors="replace"))
        proc.stdin.close()
    except OSError:  # the child died before reading: its status says why
        pass


class _Capture:
    """Reads stdout and stderr as they come, at most `limit` chars each."""

    def __init__(self, proc, limit):
        self.proc, self.limit = proc, limit
        self.buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        self.overflow: str | None = None  # "stdout" | "stderr"

    def collect(self, deadline) -> str | None:
        """Until the child exits: None, or why it must be stopped ("timeout", "overflow")."""
        sel = selectors.DefaultSelector()
        for fd in self.buffers:
            sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                events = sel.select(min(remaining, _POLL_S)) if sel.get_map() else ()
                for key, _ in events:
                    if self._read(key.fd, sel):
                        return "overflow"
                if not events and _has_exited(self.proc.pid):
                    return None  # pipes drained (or held open only by an escaped process)
                if not sel.get_map():
                    time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        finally:
            sel.close()

    def _read(self, fd, sel) -> bool:
        data = os.read(fd, 65536)
        if not data:
            sel.unregister(fd)
            return False
        buf = self.buffers[fd]
        buf += data
        if len(buf) > self.limit and len(buf.decode("utf-8", errors="replace")) > self.limit:
            self.overflow = "stdout" if fd == self.proc.stdout.fileno() else "stderr"
            return True
        return False

    def text(self, stream) -> str:
        fd = getattr(self.proc, stream).fileno()
        return self.buffers[fd].decode("utf-8", errors="replace")[: self.limit]

    def close(self):
        self.stdout_text, self.stderr_text = self.text("stdout"), self.text("stderr")
        self.proc.stdout.close()
        self.proc.stderr.close()


def _has_exited(pid) -> bool:
    """Exited, but not reaped: its pid and process group stay reserved until we reap it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _end(proc, stop: bool):
    """Stop the child if asked, kill whatever is left in its process group, reap it."""
    if stop and not _has_exited(proc.pid):
        _signal(proc.pid, signal.SIGTERM, group=False)  # the supervisor kills pid 1 of the namespace
        deadline = time.monotonic() + _STOP_GRACE_S
        while not _has_exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
    _signal(proc.pid, signal.SIGKILL, group=True)  # leftovers outside a pid namespace
    proc.wait()
    # SIGKILL lands asynchronously: wait until the group is gone (signal 0 only probes).
    deadline = time.monotonic() + _STOP_GRACE_S
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.005)


def _signal(pid, sig, group):
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _read_status(fd):
    try:
        os.set_blocking(fd, False)
        data = os.read(fd, 65536)
    except OSError:
        data = b""
    finally:
        os.close(fd)
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _remove_tree(path):
    def make_writable_and_retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU) if os.path.isdir(p) else None
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)


# ------------------------------------------------------------------------- the verdict


def _last_line(text):
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _result(capture, status, stop_reason, lim, seconds, supervisor_rc):
    out, err = capture.stdout_text, capture.stderr_text
    exit_code = None
    if status and "exit_code" in status:
        exit_code = status["exit_code"]
    elif status and "signal" in status:
        exit_code = -status["signal"]
    error = _error(status, stop_reason, capture.overflow, lim, err, supervisor_rc)
    return SandboxResult(out, err, exit_code, error, stop_reason == "timeout", seconds)


def _error(status, stop_reason, overflow, lim, stderr, supervisor_rc):
    if stop_reason == "overflow":
        return f"output over {lim['max_output_chars']} chars, cut ({overflow})"
    if status and status.get("signal") == signal.SIGXCPU:  # hit before the wall clock ran out
        return f"CPU time limit of {lim['cpu_s']:g} s exceeded"
    if stop_reason == "timeout":
        return f"timed out after {lim['timeout_s']:g} s"
    if status is None:
        return f"sandbox failed to start (exit code {supervisor_rc}){': ' + _last_line(stderr) if stderr else ''}"
    if "setup_error" in status:
        return f"sandbox setup failed: {status['setup_error']}"
    if "signal" in status:
        sig = status["signal"]
        if sig in (signal.SIGXCPU, signal.SIGKILL) and status.get("cpu_s", 0) >= lim["cpu_s"] - 0.05:
            return f"CPU time limit of {lim['cpu_s']:g} s exceeded"
        return f"crashed: killed by signal {signal.Signals(sig).name} ({signal.strsignal(sig)})"
    code = status.get("exit_code", 0)
    if code == 0:
        return None
    last = _last_line(stderr)
    if "MemoryError" in last.split(":")[0]:
        return f"memory limit of {lim['memory_mb']} MB exceeded ({last})"
    return f"exited with code {code}" + (f": {last}" if last else "")
