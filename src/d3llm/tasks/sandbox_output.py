"""The sandboxed child's output (`d3llm.tasks.sandbox` starts the child): `collect` reads both
pipes, each up to a byte cap, until the child exits or its deadline passes, then kills the
child's whole process group. The deadline holds even when something keeps the pipes open: the
child's exit is watched (a pidfd on Linux, polling elsewhere), without reaping it where the
platform allows, so its pid, also its process group id, stays reserved until the kill.
Windows has no select() on pipes: reader threads there.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time


def collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
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
