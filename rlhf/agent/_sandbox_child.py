"""The sandbox's side of a call: run by `rlhf.agent.sandbox` as `python -I this_file CONFIG`,
the code on stdin. Standard library only; never imported by the framework.

Three processes, so the code never runs with a trusted process's duties:
    supervisor  enters new user + network + pid namespaces (when the kernel allows),
                forks the init, waits for it; on SIGTERM it SIGKILLs the init.
    init        pid 1 of the new pid namespace: applies the limits (rlimits, scratch dir,
                Landlock), forks the runner, reaps, writes a JSON status line to the status
                pipe and exits. When it exits the kernel kills every process left in the
                namespace (fork bombs, daemons, setsid escapes), before the supervisor sees it.
    runner      runs the code (stdin /dev/null); audit hooks where the kernel gave nothing.
"""
import ctypes
import json
import linecache
import os
import resource
import signal
import struct
import sys
import traceback

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 1, 8, 38
CAP_DAC_READ_SEARCH, LINUX_CAPABILITY_VERSION_3 = 2, 0x20080522
# Landlock (linux/landlock.h); the syscall numbers are the same on every architecture.
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
LL_WRITE_FILE, LL_REMOVE_DIR, LL_REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
LL_MAKE_ANY = sum(1 << b for b in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
LL_REFER, LL_TRUNCATE = 1 << 13, 1 << 14          # ABI 2, ABI 3
LL_NET_BIND_TCP, LL_NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
LL_SCOPE_ABSTRACT_UNIX, LL_SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces(network):
    """New user (own uid mapped to itself), pid and, unless `network`, net namespaces."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWPID | (0 if network else CLONE_NEWNET)) != 0:
        return False
    # Unmapped ids could not create files; map ours to itself (needs setgroups denied).
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    return True


def enter_namespaces_as_root(network):
    """Root needs no user namespace for pid and net namespaces (and must not have one:
    see drop_root)."""
    return _libc.unshare(CLONE_NEWPID | (0 if network else CLONE_NEWNET)) == 0


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_root(uid, gid):
    """Become `uid` (nobody) keeping only CAP_DAC_READ_SEARCH. Root ignores RLIMIT_NPROC
    (no fork-bomb limit) and could write anything; the interpreter's files may sit where only
    root can read (/root/.pyenv), hence the one capability: reads stay as root's, as before."""
    os.setgroups([])
    _libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
    if _libc.capset(ctypes.byref(_CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _landlock_rule(ruleset, path, access):
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        attr = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)  # packed struct
        return _libc.syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), attr, ctypes.c_uint32(0)) == 0
    finally:
        os.close(fd)


def apply_landlock(scratch, network):
    """Writes only under `scratch` (and to /dev/null); no TCP unless `network`; no signals
    or abstract unix sockets out of the sandbox. Returns the ABI used, 0 if unavailable."""
    abi = _libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return 0
    fs = LL_WRITE_FILE | LL_REMOVE_DIR | LL_REMOVE_FILE | LL_MAKE_ANY
    fs |= (LL_REFER if abi >= 2 else 0) | (LL_TRUNCATE if abi >= 3 else 0)
    net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP if abi >= 4 and not network else 0
    scoped = LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL if abi >= 6 else 0
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", fs, net, scoped)[:size], size)
    ruleset = _libc.syscall(SYS_CREATE_RULESET, attr, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    try:
        ok = _landlock_rule(ruleset, scratch, fs) and _landlock_rule(
            ruleset, "/dev/null", LL_WRITE_FILE | (LL_TRUNCATE if abi >= 3 else 0))
        ok = ok and _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
        ok = ok and _libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    finally:
        os.close(ruleset)
    return abi if ok else 0


def _user_task_count():
    """Tasks (threads) of this uid on the machine: RLIMIT_NPROC counts them all when
    there is no user namespace of our own."""
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


def apply_rlimits(cfg, own_userns):
    mb = 1024 * 1024
    # In a user namespace of our own, only its processes count (kernel >= 5.14): the
    # supervisor and init. Otherwise every process of this uid on the machine does.
    nproc = cfg["max_processes"] + (2 if own_userns else _user_task_count())
    limits = {
        resource.RLIMIT_CPU: (cfg["cpu_s"], cfg["cpu_s"] + 1),  # SIGXCPU, then SIGKILL 1 s later
        resource.RLIMIT_AS: (cfg["memory_mb"] * mb,) * 2,
        resource.RLIMIT_NPROC: (nproc,) * 2,
        resource.RLIMIT_FSIZE: (cfg["max_file_mb"] * mb,) * 2,
        resource.RLIMIT_NOFILE: (cfg["max_open_files"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, (soft, hard) in limits.items():
        _, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:  # cannot raise a hard limit
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))


# ------------------------------------------------------------ audit-hook fallback


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.link", "os.symlink",
                "os.truncate", "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "os.mkfifo", "os.mknod"}
_SPAWN_EVENTS = {"os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "os.startfile",
                 "ctypes.dlopen", "pty.spawn"}
_NET_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo"}


def install_audit_hooks(scratch, block_files, block_network):
    """Python-level checks where the kernel enforces nothing: weaker, since native code
    (extension modules) does its own syscalls. Starting other programs and loading libraries
    with ctypes are blocked too, as both would leave these hooks behind."""
    root = os.path.realpath(scratch)

    def inside(path):
        if isinstance(path, int):
            return True  # an fd that is already open
        real = os.path.realpath(os.fsdecode(path))
        return real == os.devnull or real == root or real.startswith(root + os.sep)

    def hook(event, args):
        if block_files:
            if event == "open" and args[0] is not None:
                mode, flags = args[1], args[2] or 0
                writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
                if writes and not inside(args[0]):
                    raise PermissionError(f"sandbox: writing outside the scratch directory is blocked: {args[0]}")
            elif event in _PATH_EVENTS:
                paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
                for p in paths:
                    if not inside(p):
                        raise PermissionError(f"sandbox: changing files outside the scratch directory is blocked: {p}")
            elif event in _SPAWN_EVENTS:
                raise PermissionError(f"sandbox: {event} is blocked")
        if block_network:
            if event == "socket.__new__" and args[1] != getattr(__import__("socket"), "AF_UNIX", 1):
                raise PermissionError("sandbox: network access is blocked")
            if event in _NET_EVENTS:
                raise PermissionError("sandbox: network access is blocked")

    sys.addaudithook(hook)


# --------------------------------------------------------------------- the three roles


def run_code(code, cfg, iso):
    """The runner: never returns."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.dont_write_bytecode = True
    if not iso["landlock"] or not iso["namespaces"]:
        install_audit_hooks(cfg["scratch"], block_files=not iso["landlock"],
                            block_network=not cfg["network"] and not iso["namespaces"])
    sys.argv = ["<code>"]
    linecache.cache["<code>"] = (len(code), None, code.splitlines(True), "<code>")  # source lines in tracebacks
    status = 0
    try:
        exec(compile(code, "<code>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) or e.code is None else 1
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException as e:  # noqa: BLE001 - report whatever the code raised
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None  # drop this frame
        traceback.print_exception(type(e), e, tb)
        status = 1
    sys.exit(status or 0)


def init(code, cfg, namespaces, own_userns, dropped_root):
    """pid 1 of the namespace: limits, then run the code in a child and report its end."""
    status_fd = cfg["status_fd"]
    report = {"namespaces": namespaces, "landlock": 0, "own_userns": own_userns,
              "root": os.getuid() == 0, "dropped_root": dropped_root}
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.chdir(cfg["scratch"])
        if cfg["kernel_isolation"]:
            report["landlock"] = apply_landlock(cfg["scratch"], cfg["network"])
        apply_rlimits(cfg, own_userns)
        runner = os.fork()
    except Exception as e:  # noqa: BLE001
        report["setup_error"] = f"{type(e).__name__}: {e}"
        os.write(status_fd, json.dumps(report).encode())
        os._exit(70)
    if runner == 0:
        os.close(status_fd)
        run_code(code, cfg, report)
    while True:  # as pid 1, also reap orphans re-parented to us
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if pid == runner:
            report["cpu_s"] = usage.ru_utime + usage.ru_stime
            if os.WIFSIGNALED(status):
                report["signal"] = os.WTERMSIG(status)
            else:
                report["exit_code"] = os.WEXITSTATUS(status)
            break
    os.write(status_fd, json.dumps(report).encode())
    os._exit(0)


def supervise():
    cfg = json.loads(sys.argv[1])
    code = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    namespaces = own_userns = dropped_root = False
    if os.geteuid() == 0:
        namespaces = cfg["kernel_isolation"] and enter_namespaces_as_root(cfg["network"])
        try:
            drop_root(cfg["run_as"][0], cfg["run_as"][1])
            dropped_root = True
        except OSError:
            pass  # e.g. a container's root without CAP_SETUID: no process limit (reported)
    elif cfg["kernel_isolation"]:
        try:
            namespaces = own_userns = enter_namespaces(cfg["network"])
        except OSError:
            os._exit(72)  # half-made namespace: files could not be created
    # After the uid change (which clears it): the caller died, so do we.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg["parent_pid"]:
        os._exit(71)
    child, stopping = [0], [False]

    def stop(*_):
        stopping[0] = True
        if child[0]:
            os.kill(child[0], signal.SIGKILL)  # pid 1 dies: the namespace is emptied

    signal.signal(signal.SIGTERM, stop)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        init(code, cfg, namespaces, own_userns, dropped_root)
    child[0] = pid
    if stopping[0]:
        stop()
    os.close(cfg["status_fd"])
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 0
            break
    os._exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 1)


if __name__ == "__main__":
    supervise()
