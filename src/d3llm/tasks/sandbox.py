"""Run untrusted Python (model-written code) in a child process fenced off by the OS.

Every run gets a fresh, empty working directory (`tempfile.mkdtemp`, removed afterwards), a
cleared environment (`PATH=/usr/bin:/bin` only), `python -I -S -B` (no environment variables,
no user or site packages: the standard library only), its own session and process group, and a
wall-clock deadline after which the whole group is killed with SIGKILL. Its output is read
with a byte cap (`max_output_bytes` per stream; more kills it and the run fails) and the
deadline holds even if something keeps the pipes open, so neither time nor the scorer's memory
can be stretched. A trusted bootstrap sets up the layers below *before* the code runs, and
signals readiness; if a layer it was asked for fails, the run raises `TaskError` instead.

What is guaranteed, by platform (`isolation()` probes it once per process):

* Linux, running as root (the project machines and CI) -- all layers, enforced by the kernel:
  a new network namespace (only a loopback that is down: no socket reaches anything, abstract
  unix sockets included) and a new mount namespace (the working directory is a private tmpfs
  of `max_disk_mb`, freed with the namespace; /tmp, /var/tmp, /dev/shm, /run/lock and a
  world-writable TMPDIR are covered by empty root-owned tmpfs; the standard library is shown
  read-only if `nobody` could not read it), then setgroups([]) + setgid/setuid 65534
  (`nobody`): writes, renames, deletes, links and chmods outside the working directory are
  refused (except in some other world-writable directory of the host, if one exists), and
  /proc/PID/environ of the scorer or of any other process cannot be read; then rlimits:
  RLIMIT_CPU, RLIMIT_AS (`memory_mb`), RLIMIT_FSIZE (`max_file_mb`), RLIMIT_NOFILE 64,
  RLIMIT_CORE 0 and RLIMIT_NPROC 0 -- no fork, thread or subprocess at all, so nothing can
  leave the process group (setsid) or outlive the kill. Needs CAP_SYS_ADMIN and CAP_SETUID
  (a default Docker container lacks the first: then the run is refused, see below).
  Runs at the same time share uid 65534, so one could signal another.
* Linux, not root -- rlimits (with RLIMIT_NPROC 0), process group, deadline, output cap,
  cleared environment; plus a network namespace when unprivileged user namespaces work (probed
  at run time). Files writable by the user, and the user's processes' /proc entries, are NOT
  protected by the kernel.
* macOS -- rlimits where the kernel accepts them, process group, deadline, output cap,
  cleared environment; no file-system, network or /proc isolation by the kernel.
* Windows -- deadline, output cap, cleared environment only.

Everywhere, a PEP 578 audit hook is installed as a second layer (it refuses network modules,
process creation and writes outside the working directory); on its own it is not a security
boundary (code can find and disable it), it only gives clear error messages.

Where the strong (Linux root) guarantees cannot be given, `run_python` refuses to run with a
`TaskError` unless the user opts in: set D3LLM_ALLOW_UNSAFE_CODE_EXEC=1 or pass
`allow_unsafe=True` (as HF_ALLOW_CODE_EVAL does in lm-evaluation-harness).
"""

from __future__ import annotations

import binascii
import functools
import marshal
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from d3llm.errors import TaskError

OPT_IN_VARIABLE = "D3LLM_ALLOW_UNSAFE_CODE_EXEC"
SANDBOX_UID = 65534  # nobody / nogroup
_READY = b"\x06"  # written by the bootstrap, after setup and before the code runs
_ENV = {"PATH": "/usr/bin:/bin"}
_HIDDEN_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

# The child's first code: trusted, it runs before the untrusted program. It reads its settings
# from argv[2] (a Python literal), sets up the layers, writes _READY to stdout, then runs
# main.py. In probe mode it only reports which layers could be set up.
_BOOTSTRAP = r'''
import os, sys

def _setup(cfg):
    report = {}

    def fail(layer, err):
        report[layer] = str(err)
        if not cfg["probe"]:
            os.write(2, f"d3llm sandbox setup failed: {layer}: {err}\n".encode())
            os._exit(113)

    workdir, uid = cfg["workdir"], cfg["uid"]
    with open(os.path.join(workdir, "main.py"), "rb") as f:
        source = f.read()
    try:
        import resource  # now: after the switch of uid the stdlib may be out of reach
    except ImportError as e:
        resource = None
        if cfg["strict_limits"]:
            fail("limits", e)
    if cfg["namespaces"] or cfg["user_namespace"]:
        try:  # libc through _ctypes: importing the ctypes package costs 3 ms of every run
            import _ctypes

            class ulong(_ctypes._SimpleCData):
                _type_ = "L"

            class cint(_ctypes._SimpleCData):
                _type_ = "i"

            class cfunc(_ctypes.CFuncPtr):
                _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
                _restype_ = cint

            class libc:
                _handle = _ctypes.dlopen(None, 0)

            func, get_errno = (lambda name: cfunc((name, libc))), _ctypes.get_errno
        except (ImportError, AttributeError, TypeError):
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            func, get_errno, ulong = (lambda name: getattr(libc, name)), ctypes.get_errno, ctypes.c_ulong

        def check(ret, what):
            if ret != 0:
                err = get_errno()
                raise OSError(err, f"{what}: {os.strerror(err)}")

        def unshare(flags):
            check(func("unshare")(flags), f"unshare({flags:#x})")

        def mount(src, target, fstype, flags, data=None):
            enc = lambda s: None if s is None else s.encode()
            check(func("mount")(enc(src), enc(target), enc(fstype), ulong(flags), enc(data)),
                  f"mount {target}")

    if cfg["namespaces"]:
        MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
            1, 2, 4, 32, 4096, 16384, 1 << 18)
        try:
            unshare(0x00020000 | 0x40000000)  # CLONE_NEWNS | CLONE_NEWNET
            mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
            stdlib = os.path.dirname(os.__file__)  # kept at hand: a hidden dir may cover it
            stdlib_fd = os.open(stdlib, os.O_PATH) if cfg["stdlib_view"] else None
            for d in cfg["hide"]:
                mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
            os.makedirs(workdir, exist_ok=True)
            mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
                  f"size={cfg['disk_mb']}m,mode=700,uid={uid},gid={uid}")
            os.chdir(workdir)
            with open("main.py", "wb") as f:
                f.write(source)
            if cfg["stdlib_view"]:  # the stdlib is hidden from `uid`: show it read-only
                view = cfg["stdlib_view"]
                os.makedirs(view)
                mount(f"/proc/self/fd/{stdlib_fd}", view, None, MS_BIND | MS_REC)
                os.close(stdlib_fd)
                mount(None, view, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
                moved = lambda p: view + p[len(stdlib):] if p == stdlib or p.startswith(stdlib + "/") else p
                sys.path[:] = map(moved, sys.path)
                for module in list(sys.modules.values()):  # packages already imported (encodings)
                    if isinstance(getattr(module, "__path__", None), list):
                        module.__path__[:] = map(moved, module.__path__)
        except OSError as e:
            fail("namespaces", e)
    elif cfg["user_namespace"]:
        try:
            unshare(0x10000000 | 0x40000000)  # CLONE_NEWUSER | CLONE_NEWNET
        except OSError as e:
            fail("user_namespace", e)
    if cfg["drop_user"]:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if os.getresuid() != (uid,) * 3 or os.getresgid() != (uid,) * 3:
                raise OSError(f"still uid {os.getresuid()} gid {os.getresgid()}")
        except OSError as e:
            fail("drop_user", e)
    for name, value in cfg["limits"] if resource else ():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (OSError, ValueError, AttributeError) as e:
            if cfg["strict_limits"]:
                fail("limits", f"{name}: {e}")
            report.setdefault("limits_skipped", []).append(name)
    return source, report


_cfg = eval(sys.argv[2], {"__builtins__": {}})
del sys.argv[1:]
_source, _report = _setup(_cfg)
if _cfg["probe"]:
    os.write(1, repr(_report).encode())
    os._exit(0)
del _setup, _report


def _install_guard():
    # The second layer: clear errors for the common cases. Not a boundary on its own.
    import os, sys
    root = os.path.realpath(os.getcwd())
    blocked_modules = {"socket", "_socket", "ssl", "_ssl", "select", "selectors", "asyncio",
        "subprocess", "multiprocessing", "_posixsubprocess", "ctypes", "_ctypes", "urllib",
        "http", "ftplib", "smtplib", "telnetlib", "pty"}
    blocked_events = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
        "os.forkpty", "os.kill", "os.killpg", "subprocess.Popen", "ctypes.dlopen", "os.chdir",
        "os.setuid", "os.setgid", "resource.setrlimit", "sys.addaudithook"}
    path_events = {"os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.rename": 0,
        "os.replace": 0, "os.truncate": 0, "os.chmod": 0, "os.chown": 0, "os.link": 0,
        "os.symlink": 1, "os.utime": 0, "shutil.rmtree": 0, "shutil.copyfile": 1,
        "shutil.move": 1}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path, dir_fd=None):
        if isinstance(path, int) or dir_fd not in (None, -1):
            return False  # an fd or a dir_fd could point anywhere
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        full = os.path.realpath(os.path.join(root, os.fspath(path)))
        return full == root or full.startswith(root + os.sep)

    def guard(event, args):
        if event == "import" and str(args[0]).split(".")[0] in blocked_modules:
            raise PermissionError(f"sandbox: import of {args[0]} is not allowed")
        if event in blocked_events or event.startswith("socket."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (mode and any(c in str(mode) for c in "wax+")) or (flags or 0) & write_flags
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} is outside the sandbox")
        elif event in path_events:
            dir_fd = args[-1] if event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod",
                "os.chown", "os.symlink", "os.utime", "shutil.rmtree") else None
            if event in ("os.rename", "os.replace", "os.link"):
                if not (inside(args[0], args[2]) and inside(args[1], args[3])):
                    raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")
            elif event == "os.truncate" and isinstance(args[0], int):
                pass  # ftruncate: the fd was opened for writing, which `open` checked
            elif not inside(args[path_events[event]], dir_fd):
                raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")

    for name in list(sys.modules):
        if name.split(".")[0] in blocked_modules:
            del sys.modules[name]
    sys.addaudithook(guard)


if _cfg["hook"]:
    _install_guard()
del _install_guard, _cfg
os.write(1, b"\x06")
_code = compile(_source, "main.py", "exec")
del _source
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exit code 0 within the time limit and the output cap
    returncode: int | None  # None when killed for time
    timed_out: bool
    stdout: str
    stderr: str
    output_overflow: bool = False  # killed for writing more than `max_output_bytes`


@dataclass(frozen=True)
class Isolation:
    """Which kernel-enforced layers this process can give the sandboxed child."""

    platform: str
    drop_user: bool  # root: the child switches to uid/gid 65534 with no supplementary groups
    namespaces: bool  # root: new network + mount namespaces
    user_namespace: bool  # non-root: an unprivileged user + network namespace
    notes: str = ""  # why a layer is missing, from the probe

    @property
    def strong(self) -> bool:
        return self.drop_user and self.namespaces

    def describe(self) -> str:
        layers = [name for name, ok in (("unprivileged uid", self.drop_user),
                                        ("network+mount namespaces", self.namespaces),
                                        ("user+network namespace", self.user_namespace)) if ok]
        text = f"{self.platform}: " + (", ".join(layers) if layers else "no kernel isolation")
        return text + (f" ({self.notes})" if self.notes else "")


def _world_readable(path: str) -> bool:
    """Whether a user with no relation to the files could read `path` (a directory)."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        while True:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
            parent = os.path.dirname(path)
            if parent == path:
                return True
            path = parent
    except OSError:
        return False


def _hidden_dirs() -> list[str]:
    """World-writable temp directories the root sandbox covers with an empty tmpfs."""
    out: list[str] = []
    for d in (*_HIDDEN_TMP_DIRS, tempfile.gettempdir()):
        try:
            real = os.path.realpath(d)
            mode = os.stat(real).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode) and mode & stat.S_IWOTH and real != "/" and real not in out:
            out.append(real)
    return out


def _config(workdir: str, isolation_: Isolation, probe: bool, cpu_s: int, memory_bytes: int,
            file_bytes: int, disk_mb: int) -> dict:
    hide = _hidden_dirs() if isolation_.namespaces else []
    stdlib = os.path.dirname(os.__file__)
    stdlib_view = None
    under = lambda path, d: path == d or path.startswith(d.rstrip("/") + "/")
    if isolation_.namespaces and hide and (
            (isolation_.drop_user and not _world_readable(stdlib))
            or any(under(os.path.realpath(stdlib), d) for d in hide)):
        stdlib_view = os.path.join(hide[0], ".d3llm-stdlib")
    limits = [("RLIMIT_CORE", 0), ("RLIMIT_CPU", cpu_s), ("RLIMIT_FSIZE", file_bytes),
              ("RLIMIT_NOFILE", 64), ("RLIMIT_AS", memory_bytes), ("RLIMIT_NPROC", 0)]
    if sys.platform == "darwin":  # macOS refuses RLIMIT_AS below the current use; NPROC 0
        limits = [lim for lim in limits if lim[0] not in ("RLIMIT_AS",)]
    return {
        "probe": probe, "workdir": workdir, "uid": SANDBOX_UID, "hook": True,
        "drop_user": isolation_.drop_user, "namespaces": isolation_.namespaces,
        "user_namespace": isolation_.user_namespace and not isolation_.namespaces,
        "hide": hide, "disk_mb": disk_mb, "stdlib_view": stdlib_view, "limits": limits,
        "strict_limits": sys.platform == "linux",
    }


@functools.lru_cache(maxsize=None)
def isolation() -> Isolation:
    """The layers available here, probed once (one short child process on Linux)."""
    if sys.platform != "linux":
        return Isolation(sys.platform, drop_user=False, namespaces=False, user_namespace=False)
    root = os.geteuid() == 0
    wanted = Isolation("linux", drop_user=root, namespaces=root, user_namespace=not root)
    report = _probe(wanted)
    if not isinstance(report, dict):
        return Isolation("linux", False, False, False, notes=f"the probe failed: {report}")
    return Isolation(
        "linux",
        drop_user=root and "drop_user" not in report,
        namespaces=root and "namespaces" not in report,
        user_namespace=not root and "user_namespace" not in report,
        notes="; ".join(f"{k}: {v}" for k, v in report.items() if k != "limits_skipped")
        or ("" if root else "not running as root"),
    )


def _probe(wanted: Isolation) -> dict | str:
    """The bootstrap's report of the layers it could not set up, or why the probe failed."""
    import ast

    workdir = tempfile.mkdtemp(prefix="d3llm-sandbox-probe-")
    try:
        open(os.path.join(workdir, "main.py"), "w").close()
        if wanted.drop_user:
            os.chown(workdir, SANDBOX_UID, SANDBOX_UID)
        cfg = _config(workdir, wanted, True, 10, 1 << 30, 1 << 20, 1)
        out = subprocess.run(_command(cfg), cwd=workdir, env=_ENV, stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=30, start_new_session=True)
        if out.returncode != 0:
            return f"exit status {out.returncode}: {out.stderr.decode(errors='replace')[-500:]}"
        return ast.literal_eval(out.stdout.decode())
    except (OSError, subprocess.SubprocessError, ValueError, SyntaxError) as e:
        return repr(e)
    finally:
        _remove(workdir)


@functools.lru_cache(maxsize=None)
def _bootstrap_code() -> str:
    """The bootstrap compiled once here (the child is this same interpreter), base64."""
    code = compile(_BOOTSTRAP, "<d3llm-sandbox>", "exec")
    return binascii.b2a_base64(marshal.dumps(code), newline=False).decode()


def _command(cfg: dict) -> list[str]:
    stub = "import binascii, marshal, sys; exec(marshal.loads(binascii.a2b_base64(sys.argv[1])))"
    return [sys.executable, "-I", "-S", "-B", "-c", stub, _bootstrap_code(), repr(cfg)]


def _remove(workdir: str) -> None:
    def retry(func, path, _exc):  # a directory the code made unreadable: open it up and retry
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(workdir, onerror=retry)


def _opted_in(allow_unsafe: bool | None) -> bool:
    if allow_unsafe is not None:
        return allow_unsafe
    return os.environ.get(OPT_IN_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def run_python(
    code: str,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_file_mb: int = 4,
    max_output_bytes: int = 64 << 10,
    max_disk_mb: int = 16,
    allow_unsafe: bool | None = None,
) -> SandboxResult:
    """Run `code` in a fenced child process; `passed` means it exited 0 in time.

    Raises `TaskError` where the strong isolation (Linux, root) is not available, unless
    `allow_unsafe=True` or D3LLM_ALLOW_UNSAFE_CODE_EXEC=1; and when the sandbox itself could
    not be set up.
    """
    iso = isolation()
    if not iso.strong and not _opted_in(allow_unsafe):
        raise TaskError(
            f"refusing to run model-written code: the sandbox here has only {iso.describe()}; "
            "full isolation needs Linux and root (an unprivileged uid plus network and mount "
            f"namespaces). To run it with the weaker isolation anyway, set {OPT_IN_VARIABLE}=1 "
            "(or pass allow_unsafe=True)."
        )
    workdir = tempfile.mkdtemp(prefix="d3llm-sandbox-")
    try:
        with open(os.path.join(workdir, "main.py"), "w") as f:
            f.write(code + "\n")
        if iso.drop_user and not iso.namespaces:
            os.chown(workdir, SANDBOX_UID, SANDBOX_UID)
        cfg = _config(workdir, iso, False, int(timeout_s) + 1, memory_mb << 20, max_file_mb << 20,
                      max_disk_mb)
        proc = subprocess.Popen(
            _command(cfg), cwd=workdir, env=_ENV, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
            start_new_session=True,  # own session and process group: the kill reaches all of it
        )
        out, err, timed_out, overflow = _collect(proc, time.monotonic() + timeout_s, max_output_bytes + 1)
    finally:
        _remove(workdir)
    ready = out.startswith(_READY)
    if not ready and not timed_out and not overflow:
        raise TaskError(f"the code sandbox could not be set up (exit status {proc.returncode}): "
                        + err.decode(errors="replace")[-2000:].strip())
    out = out[len(_READY):] if ready else out
    return SandboxResult(
        passed=(not timed_out and not overflow and proc.returncode == 0),
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        stdout=out[:max_output_bytes].decode(errors="replace")[-4000:],
        stderr=err[:max_output_bytes].decode(errors="replace")[-4000:],
        output_overflow=overflow,
    )


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Read both pipes up to `cap` bytes each until the child exits or `deadline`; then kill
    the child's process group. Returns (stdout, stderr, timed_out, overflow)."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    timed_out = overflow = False
    try:
        if os.name == "posix":
            timed_out, overflow = _read_posix(proc, bufs, deadline, cap)
        else:
            timed_out, overflow = _read_threads(bufs, deadline, cap)
        if not (timed_out or overflow):  # pipes closed or the child gone
            timed_out = not _wait_exit(proc, deadline)
    finally:
        _kill(proc)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pipe in bufs:
            pipe.close()
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), timed_out, overflow


def _read_posix(proc: subprocess.Popen, bufs: dict, deadline: float, cap: int) -> tuple[bool, bool]:
    """Read until EOF on both pipes or the child's exit, whichever is first (a descendant that
    escaped the process group may hold the pipes open), the deadline or the byte cap."""
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            pass
    with selectors.DefaultSelector() as sel:
        for pipe in bufs:
            sel.register(pipe, selectors.EVENT_READ)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        exited = False
        try:
            while len(sel.get_map()) > (pidfd is not None):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True, False
                events = sel.select(0 if exited else remaining if pidfd is not None else min(remaining, 0.05))
                if exited and not events:
                    break  # the child is gone and the pipes are drained
                for key, _ in events:
                    if key.fileobj == pidfd:
                        exited = True
                        sel.unregister(pidfd)
                        continue
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf = bufs[key.fileobj]
                    buf += chunk[: cap - len(buf)]
                    if len(buf) >= cap:
                        return False, True
                if pidfd is None and not exited:
                    exited = _has_exited(proc)
        finally:
            if pidfd is not None:
                os.close(pidfd)
    return False, False


def _read_threads(bufs: dict, deadline: float, cap: int) -> tuple[bool, bool]:
    # Windows: no select() on pipes. Readers are daemon threads, abandoned at the deadline.
    overflow = threading.Event()

    def reader(pipe, buf):
        while len(buf) < cap:
            chunk = pipe.read1(1 << 16) if hasattr(pipe, "read1") else pipe.read(1 << 16)
            if not chunk:
                return
            buf += chunk[: cap - len(buf)]
        overflow.set()

    threads = [threading.Thread(target=reader, args=item, daemon=True) for item in bufs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if overflow.is_set():
            return False, True
    return any(t.is_alive() for t in threads), overflow.is_set()


def _has_exited(proc: subprocess.Popen) -> bool:
    """Whether the child has exited, without reaping it: its pid, which is also its process
    group id, stays reserved until the group has been killed."""
    if not hasattr(os, "waitid"):  # macOS: poll() reaps, which is the best there is
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait_exit(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait (without reaping) until the child has exited; False at the deadline."""
    pause = 0.0005
    while not _has_exited(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    return True


def _kill(proc: subprocess.Popen) -> None:
    if proc.returncode is None and os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.kill()
    except OSError:
        pass
