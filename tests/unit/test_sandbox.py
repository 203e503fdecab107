"""The code sandbox against known escapes.

Each attack is model-written code handed to `run_python`; each test asserts the attack failed
(the outside file is unchanged, nothing appeared, the listener got no connection, the secret is
not in the output) and that the scorer came back within its time bound. Attacks named
`hook_off...` first switch off the in-process audit hook (found with `gc.get_objects()`), so they
test what the operating system enforces, not the hook.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from d3llm.errors import TaskError
from d3llm.tasks import get_task
from d3llm.tasks import sandbox
from d3llm.tasks.sandbox import run_python

TIMEOUT = 2.0
# What the scorer may take beyond its deadline (start-up, the kill, clean-up): generous, so that a
# loaded machine does not fail it, and below what an attack that stretched the deadline would take
# (its processes sleep 30 s or more, or never end).
SLACK_S = 15.0

# Switches the audit hook off: swaps the code of the hook function for a no-op.
HOOK_OFF = '''
import gc
for _f in gc.get_objects():
    if type(_f).__name__ == "function" and _f.__code__.co_name == "guard":
        _names = _f.__code__.co_freevars
        _src = ("def _outer():\\n" + "".join(f"    {n} = None\\n" for n in _names)
                + "    def guard(event, args):\\n" + "".join(f"        {n}\\n" for n in _names)
                + "        return None\\n    return guard\\n")
        _ns = {}
        exec(_src, _ns)
        _f.__code__ = _ns["_outer"]().__code__
'''


def run_attack(code: str, timeout_s: float = TIMEOUT):
    start = time.monotonic()
    result = run_python(code, timeout_s=timeout_s)
    elapsed = time.monotonic() - start
    assert elapsed < timeout_s + SLACK_S, f"the scorer took {elapsed:.1f} s"
    return result


@pytest.fixture
def victim(tmp_path):
    """An outside directory holding `keep.txt`; returns (dir, file, snapshot())."""
    path = tmp_path / "keep.txt"
    path.write_text("keep")
    path.chmod(0o644)

    def snapshot():
        return sorted(os.listdir(tmp_path)), path.read_text() if path.exists() else None, \
            stat.S_IMODE(path.stat().st_mode) if path.exists() else None

    return tmp_path, path, snapshot


FILE_ATTACKS = {
    "plain_write": "open({file!r}, 'w').write('owned')",
    "plain_create": "open({dir!r} + '/new.txt', 'w').write('owned')",
    "plain_delete": "import os\nos.remove({file!r})",
    "plain_rename": "import os\nos.rename({file!r}, {dir!r} + '/moved.txt')",
    "symlink_write": "import os\nos.symlink({file!r}, 'link')\nopen('link', 'w').write('owned')",
    "dir_fd_write": "import os\nfd = os.open({dir!r}, os.O_RDONLY)\n"
                    "w = os.open('keep.txt', os.O_WRONLY | os.O_TRUNC, dir_fd=fd)\nos.write(w, b'owned')",
    "dir_fd_create": "import os\nfd = os.open({dir!r}, os.O_RDONLY)\n"
                     "os.open('new.txt', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)",
    "dir_fd_delete": "import os\nfd = os.open({dir!r}, os.O_RDONLY)\nos.remove('keep.txt', dir_fd=fd)",
    "dir_fd_rename": "import os\nfd = os.open({dir!r}, os.O_RDONLY)\n"
                     "os.rename('keep.txt', 'moved.txt', src_dir_fd=fd, dst_dir_fd=fd)",
    "opener_write": "import os\nfd = os.open({dir!r}, os.O_RDONLY)\n"
                    "open('keep.txt', 'w', opener=lambda p, f: os.open(p, f, dir_fd=fd)).write('owned')",
    "hard_link_write": "import os\nos.link({file!r}, 'x')\nopen('x', 'w').write('owned')",
    "fchmod": "import os\nfd = os.open({file!r}, os.O_RDONLY)\nos.fchmod(fd, 0o777)",
    "hook_off_write": "open({file!r}, 'w').write('owned')",
    "hook_off_create": "open({dir!r} + '/new.txt', 'w').write('owned')",
}


@pytest.mark.parametrize("attack", sorted(FILE_ATTACKS))
def test_file_attacks_outside_the_sandbox_fail(attack, victim):
    directory, path, snapshot = victim
    before = snapshot()
    code = FILE_ATTACKS[attack].format(dir=str(directory), file=str(path))
    result = run_attack((HOOK_OFF if attack.startswith("hook_off") else "") + code)
    assert snapshot() == before, result.stderr
    assert not result.passed


@pytest.mark.skipif(not sandbox.isolation().strong, reason="needs the Linux root sandbox")
@pytest.mark.parametrize("attack", sorted(FILE_ATTACKS))
def test_unprivileged_uid_alone_stops_file_attacks(attack, monkeypatch):
    """Without the audit hook and without the new root (the host's file system in full view),
    on a directory everyone may read: only the switch to an unprivileged uid stands in the way."""
    config = sandbox._config
    monkeypatch.setattr(sandbox, "_config", lambda *a, **k: {
        **config(*a, **k), "hook": False, "namespaces": False})
    directory = tempfile.mkdtemp(prefix="d3llm-test-victim-")
    try:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "keep.txt")
        with open(path, "w") as f:
            f.write("keep")
        os.chmod(path, 0o644)
        before = sorted(os.listdir(directory)), stat.S_IMODE(os.stat(path).st_mode)
        result = run_attack(FILE_ATTACKS[attack].format(dir=directory, file=path))
        assert (sorted(os.listdir(directory)), stat.S_IMODE(os.stat(path).st_mode)) == before
        assert open(path).read() == "keep"
        assert not result.passed and ("Permission denied" in result.stderr
                                      or "Operation not permitted" in result.stderr
                                      or "cross-device" in result.stderr), result.stderr
    finally:
        shutil.rmtree(directory)


FORK = ("import os\npid = os.fork()\nif pid == 0:\n    os.write(1, b'FORK' + b'ED')\n    os._exit(0)\n"
        "os.waitpid(pid, 0)")
SHELL = "echo pwned > {marker}"
PROCESS_ATTACKS = {
    "fork": FORK,
    "subprocess": f"import subprocess\nsubprocess.run(['/bin/sh', '-c', '{SHELL}'], check=True)",
    "os_system": f"import os\nassert os.system('{SHELL}') == 0",
}


@pytest.mark.parametrize("hook_off", [False, True], ids=["hook_on", "hook_off"])
@pytest.mark.parametrize("attack", sorted(PROCESS_ATTACKS))
def test_process_creation_fails(attack, hook_off, tmp_path):
    tmp_path.chmod(0o777)  # even a shell running as another user could write here
    marker = tmp_path / "pwned"
    code = PROCESS_ATTACKS[attack].format(marker=str(marker))
    result = run_attack((HOOK_OFF if hook_off else "") + code)
    time.sleep(0.1)  # a child that did get out has had time to write
    assert not marker.exists()
    assert "FORKED" not in result.stdout
    assert not result.passed


@pytest.mark.parametrize("hook_off", [False, True], ids=["hook_on", "hook_off"])
def test_detached_child_cannot_stretch_the_deadline(hook_off):
    code = (HOOK_OFF if hook_off else "") + (
        "import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    time.sleep(60)\n"
        "    os._exit(0)\nwhile True:\n    pass\n")
    result = run_attack(code)  # asserts < timeout + SLACK_S
    assert not result.passed


def test_deadline_holds_when_an_escaped_child_keeps_the_pipes(monkeypatch):
    """Even where fork is possible (RLIMIT_NPROC lifted here), the scorer does not wait for
    EOF: it returns while a setsid() grandchild that keeps stdout open still lives."""
    config = sandbox._config
    monkeypatch.setattr(sandbox, "_config", lambda *a, **k: (lambda c: {
        **c, "hook": False, "limits": [lim for lim in c["limits"] if lim[0] != "RLIMIT_NPROC"]})(
        config(*a, **k)))
    # the child prints the grandchild's pid once the grandchild is in its own session, and exits
    code = ("import os, time\nr, w = os.pipe()\npid = os.fork()\nif pid == 0:\n    os.setsid()\n"
            "    os.write(w, b'x')\n    time.sleep(60)\n    os._exit(0)\nos.read(r, 1)\n"
            "print('FORK' + 'ED', pid)\n")
    result = run_attack(code, timeout_s=1.0)
    assert result.stdout.startswith("FORKED")  # the fork did happen: this tests the reader, not NPROC
    grandchild = int(result.stdout.split()[1])
    try:
        os.kill(grandchild, 0)  # still alive (it sleeps a minute): the scorer did not wait for it
    finally:
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert result.passed  # the child exited 0 in time; only the grandchild lingers


@pytest.mark.parametrize("hook_off", [False, True], ids=["hook_on", "hook_off"])
@pytest.mark.parametrize("how", ["create_connection", "raw_socket"])
def test_loopback_connection_fails(hook_off, how):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    address = f"('127.0.0.1', {port})"
    connect = {
        "create_connection": f"import socket\ns = socket.create_connection({address}, timeout=1)\n"
                             "s.sendall(b'hi')",
        "raw_socket": f"import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect({address})",
    }[how]
    try:
        result = run_attack((HOOK_OFF if hook_off else "") + connect)
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            conn, _ = listener.accept()
            conn.close()
        assert not result.passed
    finally:
        listener.close()


def test_hook_off_prelude_really_switches_the_hook_off():
    """Otherwise the `hook_off` attacks above would only test the hook again."""
    result = run_attack(HOOK_OFF + "import socket, subprocess\nprint('HOOK' + 'OFF')")
    assert result.passed and "HOOKOFF" in result.stdout, result.stderr


def test_parent_environment_is_not_readable():
    secret = "d3llm-test-secret-4f9a1c"
    attack = ("import os\nfor pid in (os.getppid(), 1):\n    try:\n"
              "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
              "    except OSError as e:\n        print('refused', e)\n"
              "print(sorted(os.environ))")
    scorer = ("import sys\nfrom d3llm.tasks.sandbox import run_python\n"
              "r = run_python(sys.argv[1], timeout_s=2)\nprint(r.stdout)\nprint(r.stderr)")
    # The secret must be in the scorer's initial environment: /proc/PID/environ shows that.
    env = {**os.environ, "D3LLM_TEST_SECRET": secret, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", scorer, attack], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert secret not in out.stdout and secret not in out.stderr
    assert "D3LLM_TEST_SECRET" not in out.stdout


def test_huge_stdout_does_not_grow_the_scorer():
    def maxrss_mb():
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024

    before = maxrss_mb()
    result = run_attack("import sys\nchunk = b'x' * (1 << 20)\nfor _ in range(300):\n"
                        "    sys.stdout.buffer.write(chunk)\nsys.stdout.flush()")
    assert maxrss_mb() - before < 64
    assert len(result.stdout) <= 1 << 20


@pytest.mark.parametrize("code", [
    "while True:\n    pass",
    "import time\ntime.sleep(30)",
    "x = bytearray(8 << 30)\nx[-1] = 1",
    "xs = []\nwhile True:\n    xs.append(bytearray(1 << 24))",
])
def test_runaway_time_and_memory_are_cut_off(code):
    assert not run_attack(code).passed


def test_scores_right_and_wrong_solutions():
    task = get_task("code")
    p = task.problems("test", 1, seed=2)[0]
    assert task.score(p, p.target)
    assert not task.score(p, p.target.replace("return", "return None and"))
    # writing and reading its own working directory is allowed
    assert run_python("open('s.txt', 'w').write('ok')\nassert open('s.txt').read() == 'ok'").passed


def test_refuses_without_strong_isolation_unless_opted_in(monkeypatch):
    weak = sandbox.Isolation(platform="test", drop_user=False, namespaces=False, user_namespace=False)
    monkeypatch.setattr(sandbox, "isolation", lambda: weak)
    monkeypatch.delenv(sandbox.OPT_IN_VARIABLE, raising=False)
    with pytest.raises(TaskError, match=sandbox.OPT_IN_VARIABLE):
        run_python("pass")
    with pytest.raises(TaskError, match=sandbox.OPT_IN_VARIABLE):
        get_task("code").score(get_task("code").problems("test", 1)[0], "pass")
    assert run_python("pass", allow_unsafe=True).passed
    monkeypatch.setenv(sandbox.OPT_IN_VARIABLE, "1")
    assert run_python("pass").passed
