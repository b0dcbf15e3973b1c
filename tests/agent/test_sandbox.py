"""The sandbox stops what it must and says so; nothing is left running or on disk."""
import os
import re
import socket
import time

import pytest

from rlhf.agent.sandbox import run_sandboxed, sandbox_guarantees

LIMITS = dict(timeout_s=5, cpu_s=4, memory_mb=256, max_output_chars=2000)


def sandbox_pids():
    """Processes started by a sandbox (its environment carries RLHF_SANDBOX=1)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if b"RLHF_SANDBOX=1" in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def run(code, **kw):
    """Run, and check the contract that holds after every call: no process, no scratch dir."""
    result = run_sandboxed("import os; print('SCRATCH=' + os.getcwd(), flush=True)\n" + code, **{**LIMITS, **kw})
    assert sandbox_pids() == []
    scratch = re.search(r"SCRATCH=(\S+)", result.stdout)
    assert scratch, result
    assert not os.path.exists(scratch.group(1))
    return result


@pytest.fixture(params=[True, False], ids=["kernel", "audit-hooks"])
def isolation(request):
    return {"kernel_isolation": request.param}


def test_runs_code_and_returns_its_output():
    r = run("print(123 * 45)")
    assert r.error is None and r.exit_code == 0 and not r.timed_out
    assert r.stdout.splitlines()[-1] == "5535"


def test_minimal_environment():
    r = run("import os; print(sorted(os.environ))", )
    names = eval(r.stdout.splitlines()[-1])
    assert "HOME" in names and not any(k for k in names if "TOKEN" in k or "KEY" in k or k.startswith("RAY"))
    assert set(names) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "RLHF_SANDBOX", "OMP_NUM_THREADS",
                          "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}


def test_network_connect_and_bind_are_refused(isolation):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    try:
        r = run(f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))", **isolation)
        assert r.exit_code == 1 and re.search(r"PermissionError|Network is unreachable|Connection refused", r.error), r
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing reached the host
        r = run("import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 0))\nprint('bound')", **isolation)
        assert r.exit_code == 1 and "bound" not in r.stdout and "PermissionError" in r.error, r
    finally:
        listener.close()


def test_writes_outside_the_scratch_dir_are_refused(tmp_path, isolation):
    tmp_path.chmod(0o777)  # writable by anyone: only the sandbox may stop the write
    target, victim = tmp_path / "escaped.txt", tmp_path / "keep.txt"
    victim.write_text("mine")
    victim.chmod(0o666)
    r = run(f"open({str(target)!r}, 'w').write('x')", **isolation)
    assert r.exit_code == 1 and "PermissionError" in r.error, r
    assert not target.exists()
    r = run(f"import os; os.remove({str(victim)!r})", **isolation)
    assert r.exit_code == 1 and "PermissionError" in r.error, r
    assert victim.read_text() == "mine"
    r = run("open('inside.txt', 'w').write('ok'); print(open('inside.txt').read())", **isolation)
    assert r.error is None and r.stdout.endswith("ok\n")


def test_a_program_started_by_the_code_cannot_write_outside_either(tmp_path):
    if not sandbox_guarantees()["landlock_abi"]:
        pytest.skip("no Landlock here: the audit-hook fallback blocks starting programs instead")
    tmp_path.chmod(0o777)
    target = tmp_path / "escaped.txt"
    r = run(f"import subprocess; print(subprocess.run(['sh', '-c', 'echo x > {target}']).returncode)")
    assert r.stdout.splitlines()[-1] != "0" and not target.exists()


def test_fork_bomb_is_bounded_and_leaves_nothing(isolation):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    r = run(code, timeout_s=1.5, max_processes=16, **isolation)
    assert r.timed_out and r.error == "timed out after 1.5 s", r
    assert time.monotonic() - start < 6


def test_fork_count_is_capped():
    code = ("import os, time\nn = 0\nfor _ in range(64):\n    try:\n        pid = os.fork()\n    except OSError:\n"
            "        break\n    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n    n += 1\nprint('forked', n, flush=True)\nos._exit(0)")
    r = run(code, max_processes=8)
    forked = int(r.stdout.split("forked ")[1])
    assert 1 <= forked < 8, r


def test_allocating_10_gb_is_refused():
    r = run("b = bytearray(10 * 1024**3)", memory_mb=256)
    assert r.error.startswith("memory limit of 256 MB exceeded") and "MemoryError" in r.error, r


def test_infinite_loop_hits_the_cpu_limit_or_the_timeout():
    r = run("while True: pass", timeout_s=1.0, cpu_s=30)
    assert r.timed_out and r.error == "timed out after 1 s"
    r = run("while True: pass", timeout_s=10, cpu_s=1)
    assert not r.timed_out and r.error == "CPU time limit of 1 s exceeded" and r.exit_code < 0, r


def test_sleeping_forever_times_out():
    start = time.monotonic()
    r = run("import time; time.sleep(60)", timeout_s=0.8)
    assert r.timed_out and r.error == "timed out after 0.8 s" and r.exit_code is None
    assert 0.8 <= r.seconds < 4 and time.monotonic() - start < 4


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_cut_and_stopped(stream):
    r = run(f"import sys\nwhile True: sys.{stream}.write('x' * 1000)", max_output_chars=5000)
    assert r.error == f"output over 5000 chars, cut ({stream})" and not r.timed_out
    assert len(getattr(r, stream)) == 5000 and r.seconds < 4


@pytest.mark.parametrize("code, signal_name", [("os.abort()", "SIGABRT"), ("import ctypes; ctypes.string_at(0)", "SIGSEGV")])
def test_crashes_are_reported(code, signal_name):
    r = run("import os\n" + code)
    assert r.error.startswith(f"crashed: killed by signal {signal_name}") and r.exit_code < 0, r


def test_exceptions_and_exit_codes():
    r = run("raise ValueError('boom')")
    assert r.exit_code == 1 and r.error == "exited with code 1: ValueError: boom"
    assert 'File "<code>", line 2' in r.stderr and "raise ValueError('boom')" in r.stderr
    r = run("import sys; sys.exit(3)")
    assert r.exit_code == 3 and r.error == "exited with code 3"


def test_background_processes_die_with_the_call():
    r = run("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\nprint('parent done')")
    assert r.error is None and "parent done" in r.stdout  # run() asserts nothing is left


def test_bad_input_is_an_error_not_an_exception():
    assert run_sandboxed(None, **LIMITS).error == "code must be a string, not NoneType"
    assert "limits must be positive" in run_sandboxed("1", **{**LIMITS, "timeout_s": 0}).error


def test_guarantees_describe_this_machine():
    g = sandbox_guarantees()
    assert isinstance(g["namespaces"], bool) and isinstance(g["landlock_abi"], int)
    assert g["network"] and g["file_writes"] and g["not_restricted"]
