"""Scores a response cannot steer, and isolation that holds: no host Unix socket, no System V
IPC, no setuid program, a root that shows only what Python needs, nothing left after a run.

The code task runs the response as a module in the sandbox, calls the function there and
compares the returned values here. Each attack below pairs a wrong `bump` with a way to end
the run or to fake equality; every one must score False while the reference scores True.
The OS attacks switch the in-process audit hook off first (`HOOK_OFF`), so they test what the
kernel enforces.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from d3llm.tasks import get_task
from d3llm.tasks import sandbox
from d3llm.tasks.sandbox import CALL_FAILED, run_calls, run_python

from tests.unit.test_sandbox import HOOK_OFF

strong = pytest.mark.skipif(not sandbox.isolation().strong, reason="needs the Linux root sandbox")

WRONG = "def {f}(xs):\n    return xs\n"
FAKES = {
    "os_exit_at_module_level": "import os\nos._exit(0)\n" + WRONG,
    "system_exit_at_module_level": "raise SystemExit(0)\n" + WRONG,
    "sys_exit_in_the_function": "import sys\ndef {f}(xs):\n    sys.exit(0)\n",
    "os_exit_in_the_function": "import os\ndef {f}(xs):\n    os._exit(0)\n",
    "atexit_os_exit": "import atexit, os\natexit.register(os._exit, 0)\n" + WRONG,
    "eq_always_true": "class A:\n    def __eq__(self, other):\n        return True\n"
                      "def {f}(xs):\n    return A()\n",
    "int_subclass": "class I(int):\n    def __eq__(self, other):\n        return True\n"
                    "def {f}(xs):\n    return I(1)\n",
    "list_subclass": "class L(list):\n    def __eq__(self, other):\n        return True\n"
                     "def {f}(xs):\n    return L()\n",
    "fake_result_lines_on_stdout": "print('{{\"ok\": [1]}}')\nprint('\"end\"')\n" + WRONG,
    "fake_result_lines_on_the_channel": "import os\nfor i in range(2, 9):\n    try:\n"
        "        os.write(i, b'\\x06' + b'{{\"ok\": []}}\\n' * 9 + b'\"end\"\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)\n" + WRONG,
    "keyboard_interrupt_in_the_function": "def {f}(xs):\n    raise KeyboardInterrupt\n",
    "huge_int": "def {f}(xs):\n    return 10 ** 5000\n",
    "deep_nesting": "def {f}(xs):\n    v = []\n    for _ in range(100000):\n        v = [v]\n    return v\n",
}


@pytest.fixture(scope="module")
def bump():
    task = get_task("code")
    problem = next(p for p in task.problems("test", 60, seed=0) if p.answer == "bump")
    return task, problem


def test_the_reference_solution_scores_true(bump):
    task, problem = bump
    assert task.score(problem, problem.target)


@pytest.mark.parametrize("fake", sorted(FAKES))
def test_a_wrong_answer_cannot_fake_a_pass(fake, bump):
    task, problem = bump
    assert not task.score(problem, FAKES[fake].format(f=problem.answer))


def test_values_come_back_as_plain_data():
    code = "def f(x):\n    return {'a': [x, True, None, 1.5, 'é', (1, 2)]}\nclass C: pass\n"
    result = run_calls(code, ["f(3)", "C()", "1 // 0", "int", "f"])
    assert result.complete
    assert result.values == ({"a": [3, True, None, 1.5, "é", [1, 2]]}, CALL_FAILED, CALL_FAILED,
                             CALL_FAILED, CALL_FAILED)


def test_an_early_exit_leaves_the_result_incomplete():
    result = run_calls("def f():\n    return 1\n", ["f()", "__import__('os')._exit(0)", "f()"])
    assert not result.complete and result.values == (CALL_FAILED,) * 3


@pytest.mark.parametrize("hook_off", [False, True], ids=["hook_on", "hook_off"])
def test_host_unix_socket_is_out_of_reach(hook_off):
    """A world-connectable socket outside /tmp: the new root does not show it."""
    base = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
    directory = tempfile.mkdtemp(prefix="d3llm-test-sock-", dir=base)
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o666)
        listener.listen(1)
        code = f"import _socket\ns = _socket.socket(_socket.AF_UNIX)\ns.connect({path!r})\nprint('CONN' + 'ECTED')"
        result = run_python((HOOK_OFF if hook_off else "") + code, timeout_s=2)
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()
        assert not result.passed and "CONNECTED" not in result.stdout
    finally:
        listener.close()
        os.unlink(path)
        os.rmdir(directory)


LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
IPC_ATTACKS = {
    # IPC_PRIVATE = 0, IPC_CREAT = 0o1000
    "shared_memory": LIBC + "ids = [libc.shmget(0, 256 << 20, 0o1600) for _ in range(3)]\nprint('IDS', ids)\n"
                            "assert max(ids) >= 0",
    "message_queue": LIBC + "ids = [libc.msgget(0, 0o1600) for _ in range(3)]\nprint('IDS', ids)\nassert max(ids) >= 0",
    "semaphores": LIBC + "ids = [libc.semget(0, 4, 0o1600) for _ in range(3)]\nprint('IDS', ids)\nassert max(ids) >= 0",
}


def _host_ipc() -> list[str]:
    return [Path(f"/proc/sysvipc/{kind}").read_text() for kind in ("shm", "msg", "sem")]


@strong
@pytest.mark.parametrize("attack", sorted(IPC_ATTACKS))
def test_system_v_ipc_is_refused_and_leaves_nothing(attack):
    before = _host_ipc()
    result = run_python(HOOK_OFF + IPC_ATTACKS[attack], timeout_s=2)
    assert "IDS [-1, -1, -1]" in result.stdout, result.stderr  # ctypes did load: the call ran
    assert not result.passed
    assert _host_ipc() == before


@strong
def test_setuid_programs_are_out_of_reach_and_cannot_gain_privileges():
    code = HOOK_OFF + LIBC + (
        "print('NNP', libc.prctl(39, 0, 0, 0, 0))\n"  # PR_GET_NO_NEW_PRIVS
        "import os\nfor p in ('/etc/shadow', '/usr/bin/passwd', '/bin/su', '/proc/1/environ'):\n"
        "    print(p, os.path.exists(p))\n"
        "os.execv('/usr/bin/passwd', ['passwd', '-S', 'root'])\n")
    result = run_python(code, timeout_s=2)
    assert "NNP 1" in result.stdout, result.stderr
    assert "True" not in result.stdout
    assert not result.passed and "root P" not in result.stdout


@strong
def test_the_new_root_shows_only_what_python_needs():
    result = run_python(HOOK_OFF + "import os\nprint(sorted(os.listdir('/')), os.getuid(), os.getcwd())")
    assert result.passed, result.stderr
    shown = result.stdout
    assert "'tmp'" not in shown and "'proc'" not in shown and "'home'" not in shown
    assert shown.strip().endswith("65534 /work")


@strong
def test_no_leftovers_after_fifty_runs(tmp_path, monkeypatch):
    """Files, directories and System V objects: none survives a run (killed or not). The runs'
    directories are made in `tmp_path` (others may run sandboxes in /tmp at the same time)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def snapshot():
        return sorted(os.listdir(tmp_path)), _host_ipc()

    before = snapshot()
    attacks = [(HOOK_OFF + IPC_ATTACKS["shared_memory"], 5), ("open('f', 'wb').write(b'x' * (1 << 20))", 5),
               ("while True:\n    pass", 0.5), ("import os\nos._exit(3)", 5), ("x = bytearray(8 << 30)", 5)]
    results = [run_python(code, timeout_s=limit) for code, limit in (attacks[i % len(attacks)] for i in range(50))]
    assert sum(r.passed for r in results) == 10  # only the file writer exits 0
    assert snapshot() == before


@strong
def test_probe_reports_every_layer():
    iso = sandbox.isolation()
    assert iso.strong and iso.notes == ""
    assert "IPC" in iso.describe()

