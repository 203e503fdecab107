"""Run untrusted Python (model-written code) in a separate, fenced process.

The child runs `python -I` (isolated: no user site, no environment variables) in a fresh
temporary directory that is deleted afterwards, under resource limits (CPU seconds, address
space, file size) and a wall-clock timeout after which its whole process group is killed.
An audit hook (PEP 578, which code cannot remove once installed) refuses network modules and
sockets, process creation, and any file write, delete or rename outside the temporary
directory. This fences off mistakes and casual hostility in generated code; it is not a
security boundary against a determined attacker (use a container for that).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_GUARD = r'''
def _install_guard():
    # A closure, so the code under test cannot rebind the guard's settings by name.
    import os, sys
    root = os.path.realpath(os.getcwd())
    blocked_modules = {"socket", "_socket", "ssl", "_ssl", "select", "selectors", "asyncio",
        "subprocess", "multiprocessing", "_posixsubprocess", "ctypes", "_ctypes", "urllib",
        "http", "ftplib", "smtplib", "telnetlib", "pty"}
    blocked_events = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
        "os.forkpty", "os.kill", "os.killpg", "subprocess.Popen", "ctypes.dlopen", "os.chdir",
        "os.setuid", "os.setgid", "resource.setrlimit", "sys.addaudithook"}
    path_events = {"os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.rename": 0,
        "os.replace": 0, "os.truncate": 0, "os.chmod": 0, "os.chown": 0, "os.link": 1,
        "os.symlink": 1, "os.utime": 0, "shutil.rmtree": 0, "shutil.copyfile": 1,
        "shutil.move": 1}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path):
        if isinstance(path, int):
            return True
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
        elif event in path_events and not inside(args[path_events[event]]):
            raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")

    for name in list(sys.modules):
        if name.split(".")[0] in blocked_modules:
            del sys.modules[name]
    sys.addaudithook(guard)


_install_guard()
del _install_guard
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exit code 0 within the time limit
    returncode: int | None  # None when killed for time
    timed_out: bool
    stdout: str
    stderr: str


def _limits(cpu_s: int, memory_bytes: int, file_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(
    code: str,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_file_mb: int = 4,
) -> SandboxResult:
    """Run `code` in a fenced child process; `passed` means it exited 0 in time."""
    with tempfile.TemporaryDirectory(prefix="d3llm-sandbox-") as workdir:
        script = os.path.join(workdir, "main.py")
        with open(script, "w") as f:
            f.write(_GUARD + "\n" + code + "\n")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", script],
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group: the timeout kills all of it
            preexec_fn=_limits(int(timeout_s) + 1, memory_mb << 20, max_file_mb << 20),
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            timed_out = True
        return SandboxResult(
            passed=(not timed_out and proc.returncode == 0),
            returncode=None if timed_out else proc.returncode,
            timed_out=timed_out,
            stdout=out.decode(errors="replace")[-4000:],
            stderr=err.decode(errors="replace")[-4000:],
        )
