"""Run untrusted Python (model-written code) in a child process fenced off by the OS.

Two entry points: `run_python(code)` runs a program and reports its exit status;
`run_calls(code, calls)` runs module code, then evaluates each call expression, and returns the
values as plain data decoded here (the code task compares them with its expected values, which
never enter the child, so no exit, exception, patched builtin or object with a lying `__eq__`
can turn a wrong answer into a right one). docs/sandbox.md says what is promised and what not.

Every run gets a fresh working directory, a cleared environment (`PATH=/usr/bin:/bin` only),
`python -I -S -B` (the standard library only), its own session and process group, and a
wall-clock deadline after which the whole group is killed with SIGKILL. Its output is read
with a byte cap (`max_output_bytes` per stream; more kills it and the run fails) and the
deadline holds even if something keeps the pipes open (`d3llm.tasks.sandbox_output`). The
child's trusted first part, `d3llm.tasks.sandbox_child`, builds the kernel layers before the
code runs and signals readiness; if a layer it was asked for fails, the run raises `TaskError`
instead.

What is guaranteed, by platform (`isolation()` probes it once per process):

* Linux, running as root (the project machines and CI) -- all layers, enforced by the kernel:
  new mount, network and IPC namespaces; a new root (chroot) that shows only read-only,
  nosuid binds of the interpreter's sys.path and the system library directories, three
  harmless devices and a private tmpfs working directory of `max_disk_mb` (no /proc, /tmp,
  host unix socket or setuid program is visible); System V IPC limits of zero in the new IPC
  namespace; no network at all (a loopback that is down); then setgroups([]) + setgid/setuid
  65534 (`nobody`), PR_SET_NO_NEW_PRIVS, and rlimits: RLIMIT_CPU, RLIMIT_AS (`memory_mb`),
  RLIMIT_FSIZE (`max_file_mb`), RLIMIT_NOFILE 64, RLIMIT_CORE 0, RLIMIT_MSGQUEUE 0 and
  RLIMIT_NPROC 0 -- no fork, thread or subprocess, so nothing outlives the kill; everything the
  run made (files, IPC objects) goes with its namespaces. Needs CAP_SYS_ADMIN and CAP_SETUID
  (a default Docker container lacks the first: then the run is refused, see below). Runs at
  the same time share uid 65534, so one could signal another.
* Linux, not root -- rlimits (with RLIMIT_NPROC 0), PR_SET_NO_NEW_PRIVS, process group,
  deadline, output cap, cleared environment; plus user, network and IPC namespaces when
  unprivileged user namespaces work. Files writable by the user, and the user's processes'
  /proc entries, are NOT protected by the kernel.
* macOS -- rlimits where the kernel accepts them, process group, deadline, output cap,
  cleared environment; no file-system, network or /proc isolation by the kernel.
* Windows -- deadline, output cap, cleared environment only.

Everywhere, a PEP 578 audit hook is installed as a second layer (it refuses network modules,
process creation and writes outside the working directory); on its own it is not a security
boundary (code can find and disable it), it only gives clear error messages.

Where the strong (Linux root) guarantees cannot be given, `run_python` and `run_calls` refuse
to run with a `TaskError` unless the user opts in: set D3LLM_ALLOW_UNSAFE_CODE_EXEC=1 or pass
`allow_unsafe=True` (as HF_ALLOW_CODE_EVAL does in lm-evaluation-harness).
"""

from __future__ import annotations

import binascii
import functools
import json
import marshal
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from d3llm.errors import TaskError
from d3llm.tasks.sandbox_output import collect

OPT_IN_VARIABLE = "D3LLM_ALLOW_UNSAFE_CODE_EXEC"
SANDBOX_UID = 65534  # nobody / nogroup
_READY = b"\x06"  # written by the child after setup and before the code runs (sandbox_child.READY)
_END = b'"end"'  # the results channel's last line in "calls" mode (sandbox_child.END)
_ENV = {"PATH": "/usr/bin:/bin"}
_CHILD = Path(__file__).with_name("sandbox_child.py")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exit code 0 within the time limit and the output cap
    returncode: int | None  # None when killed for time
    timed_out: bool
    stdout: str
    stderr: str
    output_overflow: bool = False  # killed for writing more than `max_output_bytes`


class CallFailed:
    """Stands for a call that raised, returned a value that is not plain data, or never ran."""

    def __repr__(self) -> str:
        return "CALL_FAILED"


CALL_FAILED = CallFailed()


@dataclass(frozen=True)
class CallsResult:
    values: tuple  # one per call: plain data (None, bool, int, float, str, list, dict) or CALL_FAILED
    complete: bool  # every call answered and the end marker written, in time, within the caps
    run: SandboxResult  # the run itself (its stdout is the results channel, its stderr the code's output)


@dataclass(frozen=True)
class Isolation:
    """Which kernel-enforced layers this process can give the sandboxed child."""

    platform: str
    drop_user: bool  # root: the child switches to uid/gid 65534 with no supplementary groups
    namespaces: bool  # root: new mount, network and IPC namespaces and a new root
    user_namespace: bool  # non-root: an unprivileged user + network + IPC namespace
    notes: str = ""  # why a layer is missing, from the probe

    @property
    def strong(self) -> bool:
        return self.drop_user and self.namespaces

    def describe(self) -> str:
        layers = [name for name, ok in (("unprivileged uid", self.drop_user),
                                        ("mount+network+IPC namespaces and a new root", self.namespaces),
                                        ("user+network+IPC namespace", self.user_namespace)) if ok]
        text = f"{self.platform}: " + (", ".join(layers) if layers else "no kernel isolation")
        return text + (f" ({self.notes})" if self.notes else "")


def _config(workdir: str, isolation_: Isolation, probe: bool, cpu_s: int, memory_bytes: int,
            file_bytes: int, disk_mb: int, calls: Sequence[str] | None = None) -> dict:
    limits = [("RLIMIT_CORE", 0), ("RLIMIT_CPU", cpu_s), ("RLIMIT_FSIZE", file_bytes),
              ("RLIMIT_NOFILE", 64), ("RLIMIT_AS", memory_bytes), ("RLIMIT_NPROC", 0)]
    if sys.platform == "linux":
        limits.append(("RLIMIT_MSGQUEUE", 0))  # POSIX message queues
    if sys.platform == "darwin":  # macOS refuses RLIMIT_AS below the current use
        limits = [lim for lim in limits if lim[0] not in ("RLIMIT_AS",)]
    return {
        "probe": probe, "workdir": workdir, "uid": SANDBOX_UID, "hook": True,
        "drop_user": isolation_.drop_user, "namespaces": isolation_.namespaces,
        "user_namespace": isolation_.user_namespace and not isolation_.namespaces,
        "disk_mb": disk_mb, "limits": limits, "strict_limits": sys.platform == "linux",
        "mode": "program" if calls is None else "calls", "calls": list(calls or ()),
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
        drop_user=root and "drop_user" not in report and "no_new_privs" not in report,
        namespaces=root and "namespaces" not in report,
        user_namespace=not root and "user_namespace" not in report,
        notes="; ".join(f"{k}: {v}" for k, v in report.items() if k != "limits_skipped")
        or ("" if root else "not running as root"),
    )


def _probe(wanted: Isolation) -> dict | str:
    """The child's report of the layers it could not set up, or why the probe failed."""
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
def _child_code() -> str:
    """sandbox_child.py compiled once here (the child is this same interpreter), base64."""
    code = compile(_CHILD.read_text(), "<d3llm-sandbox>", "exec")
    return binascii.b2a_base64(marshal.dumps(code), newline=False).decode()


def _command(cfg: dict) -> list[str]:
    stub = "import binascii, marshal, sys; exec(marshal.loads(binascii.a2b_base64(sys.argv[1])))"
    return [sys.executable, "-I", "-S", "-B", "-c", stub, _child_code(), repr(cfg)]


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
    return _run(code, None, timeout_s, memory_mb, max_file_mb, max_output_bytes, max_disk_mb, allow_unsafe)


def run_calls(
    code: str,
    calls: Sequence[str],
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_file_mb: int = 4,
    max_output_bytes: int = 64 << 10,
    max_disk_mb: int = 16,
    allow_unsafe: bool | None = None,
) -> CallsResult:
    """Run `code` as a module in the fenced child, then evaluate each expression of `calls` in
    its namespace; returns each value as plain data decoded here (CALL_FAILED where the call
    raised or its value was not plain data). Exiting before every call is answered leaves the
    result incomplete. Raises as `run_python`."""
    run = _run(code, calls, timeout_s, memory_mb, max_file_mb, max_output_bytes, max_disk_mb, allow_unsafe)
    lines = run.stdout.split("\n")
    finished = lines[len(calls):len(calls) + 1] == [_END.decode()]
    values = tuple(_decode(line) for line in lines[:len(calls)])
    values += (CALL_FAILED,) * (len(calls) - len(values))
    complete = finished and not run.timed_out and not run.output_overflow
    return CallsResult(values=values if complete else (CALL_FAILED,) * len(calls), complete=complete, run=run)


def _decode(line: str) -> object:
    """One result line from the child: its plain value, or CALL_FAILED (the line may be anything)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # ValueError: bad JSON, or an int too long to parse
        return CALL_FAILED
    if type(record) is not dict or set(record) != {"ok"}:
        return CALL_FAILED
    return record["ok"]


def _run(code: str, calls: Sequence[str] | None, timeout_s: float, memory_mb: int, max_file_mb: int,
         max_output_bytes: int, max_disk_mb: int, allow_unsafe: bool | None) -> SandboxResult:
    iso = isolation()
    if not iso.strong and not _opted_in(allow_unsafe):
        raise TaskError(
            f"refusing to run model-written code: the sandbox here has only {iso.describe()}; "
            "full isolation needs Linux and root (an unprivileged uid plus mount, network and "
            f"IPC namespaces). To run it with the weaker isolation anyway, set {OPT_IN_VARIABLE}=1 "
            "(or pass allow_unsafe=True)."
        )
    workdir = tempfile.mkdtemp(prefix="d3llm-sandbox-")
    try:
        with open(os.path.join(workdir, "main.py"), "w") as f:
            f.write(code + "\n")
        if iso.drop_user and not iso.namespaces:
            os.chown(workdir, SANDBOX_UID, SANDBOX_UID)
        cfg = _config(workdir, iso, False, int(timeout_s) + 1, memory_mb << 20, max_file_mb << 20,
                      max_disk_mb, calls)
        proc = subprocess.Popen(
            _command(cfg), cwd=workdir, env=_ENV, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
            start_new_session=True,  # own session and process group: the kill reaches all of it
        )
        out, err, timed_out, overflow = collect(proc, time.monotonic() + timeout_s, max_output_bytes + 1)
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
        stdout=out[:max_output_bytes].decode(errors="replace")[-max_output_bytes:],
        stderr=err[:max_output_bytes].decode(errors="replace")[-4000:],
        output_overflow=overflow,
    )
