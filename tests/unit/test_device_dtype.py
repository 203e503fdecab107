"""`--device` / `--dtype`: one resolution function for every entry point.

CUDA and MPS are simulated by monkeypatching torch's availability checks, so every branch
runs on a CPU-only machine; nothing is moved to a device that is not there.
"""

from __future__ import annotations

import pytest
import torch

from d3llm.errors import D3llmError
from d3llm.models.loading import resolve_device_dtype
from tests.conftest import run_cli, save_toy_model


@pytest.fixture
def machine(monkeypatch):
    """Set what the machine has: `machine(cuda=2, bf16=True, mps=False)`."""

    def configure(cuda: int = 0, bf16: bool = True, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda > 0 and bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return configure


@pytest.mark.parametrize("cuda, bf16, mps, device, dtype", [
    (1, True, False, torch.device("cuda"), torch.bfloat16),  # a GPU with bf16 (Ampere and later)
    (2, False, False, torch.device("cuda"), torch.float16),  # an older GPU
    (0, False, True, torch.device("mps"), torch.float16),  # Apple silicon
    (0, False, False, torch.device("cpu"), torch.float32),  # the CPU
])
def test_auto_picks_the_best_device_and_its_dtype(machine, cuda, bf16, mps, device, dtype):
    machine(cuda=cuda, bf16=bf16, mps=mps)
    assert resolve_device_dtype("auto", "auto") == (device, dtype)
    assert resolve_device_dtype(None, None) == (device, dtype)  # None means auto too
    assert resolve_device_dtype() == (device, dtype)


@pytest.mark.parametrize("device, dtype, expected", [
    ("cpu", "auto", (torch.device("cpu"), torch.float32)),
    ("CPU", "bfloat16", (torch.device("cpu"), torch.bfloat16)),
    ("cpu:0", "float16", (torch.device("cpu"), torch.float16)),
    ("cuda", "auto", (torch.device("cuda"), torch.bfloat16)),
    ("cuda:1", "float32", (torch.device("cuda", 1), torch.float32)),
    ("mps", "auto", (torch.device("mps"), torch.float16)),
    (torch.device("cuda", 0), torch.float16, (torch.device("cuda", 0), torch.float16)),
    (torch.device("cpu"), "torch.bfloat16", (torch.device("cpu"), torch.bfloat16)),
])
def test_explicit_choices(machine, device, dtype, expected):
    machine(cuda=2, bf16=True, mps=True)
    assert resolve_device_dtype(device, dtype) == expected


@pytest.mark.parametrize("cuda, mps, device, dtype, message", [
    (0, False, "cuda", "auto", "--device cuda: CUDA is not available on this machine"),
    (0, False, "cuda:1", "auto", "--device cuda:1: CUDA is not available on this machine"),
    (2, False, "cuda:2", "auto", "--device cuda:2: only 2 CUDA devices (cuda:0 .. cuda:1)"),
    (1, False, "cuda:1", "auto", "--device cuda:1: only 1 CUDA device (cuda:0)"),
    (0, False, "mps", "auto", "--device mps: MPS (Apple GPU) is not available on this machine"),
    (0, False, "tpu", "auto", "--device tpu: unknown device; choose one of auto, cpu, cuda, cuda:N, mps"),
    (0, False, "meta", "auto", "--device meta: unknown device"),
    (0, False, "cuda:x", "auto", "--device cuda:x: unknown device"),
    (0, False, "cpu", "int8", "--dtype int8: unknown dtype; choose one of auto, float32, bfloat16, float16"),
    (0, False, "cpu", torch.int8, "--dtype torch.int8: unknown dtype"),
    (0, False, 3, "auto", "--device 3: a device is a string"),
])
def test_errors_are_one_line_and_name_the_argument(machine, cuda, mps, device, dtype, message):
    machine(cuda=cuda, mps=mps)
    with pytest.raises(D3llmError) as error:
        resolve_device_dtype(device, dtype, names=("--device", "--dtype"))
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


def test_the_python_api_names_its_own_arguments(machine, tmp_path, tiny_tokenizer):
    from d3llm.models import load_model

    machine(cuda=0)
    folder = save_toy_model(tmp_path / "toy", tiny_tokenizer)
    with pytest.raises(D3llmError, match=r"^device cuda:1: CUDA is not available on this machine$"):
        load_model(folder, device="cuda:1")
    with pytest.raises(D3llmError, match=r"^dtype fp8: unknown dtype"):
        load_model(folder, dtype="fp8")
    lm = load_model(folder, device=torch.device("cpu"), dtype="bfloat16")
    assert lm.model.device == torch.device("cpu") and lm.model.dtype == torch.bfloat16
    lm = load_model(folder)  # auto on a CPU-only machine: float32 on the CPU
    assert lm.model.device == torch.device("cpu") and lm.model.dtype == torch.float32


def test_generate_with_device_cpu_and_dtype_float32(monkeypatch, capsys, tmp_path, tiny_tokenizer):
    folder = save_toy_model(tmp_path / "toy", tiny_tokenizer)
    code, out, err = run_cli(monkeypatch, capsys, "generate", "--model", folder, "--device", "cpu",
                             "--dtype", "float32", "--method", "vanilla", "--max-new-tokens", 8,
                             "--set", "block_size=4", "--stats", "How many apples?")
    assert code in (0, None), err
    assert "nfe=8" in err


# Every command that loads a model resolves --device / --dtype first (before any work).
LOADING_COMMANDS = {
    "generate": ["generate", "--model", "tiny-ar", "hi"],
    "eval": ["eval", "--model", "tiny-ar", "--task", "arith"],
    "sweep": ["sweep", "--model", "tiny-ar", "--task", "arith", "--method", "ar", "--param", "seed=0",
              "--out", "{tmp}/sweep"],
    "demo": ["demo", "--out", "{tmp}/demo"],
    "trajectories": ["trajectories", "--teacher", "tiny-teacher", "--task", "arith=2", "--out", "{tmp}/traj"],
    "serve": ["serve", "--model", "tiny-ar"],
    "chat": ["chat", "--model", "tiny-ar"],
}


@pytest.mark.parametrize("args", LOADING_COMMANDS.values(), ids=LOADING_COMMANDS.keys())
@pytest.mark.parametrize("option, message", [
    (["--device", "cuda:1"], "error: --device cuda:1: CUDA is not available on this machine"),
    (["--device", "gpu"], "error: --device gpu: unknown device; choose one of auto, cpu, cuda, cuda:N, mps"),
    (["--dtype", "half-ish"], "error: --dtype half-ish: unknown dtype; choose one of auto, float32, bfloat16, float16"),
])
def test_every_loading_command_takes_device_and_dtype(monkeypatch, capsys, machine, tmp_path, args, option, message):
    machine(cuda=0)
    code, _, err = run_cli(monkeypatch, capsys, *[a.format(tmp=tmp_path) for a in args], *option)
    assert code == 2, err
    assert err.strip() == message
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "demo").exists()  # nothing written


def test_lm_eval_model_args_device_and_dtype(machine, tmp_path, tiny_tokenizer):
    pytest.importorskip("lm_eval")
    from d3llm.eval.lm_eval_adapter import D3llmLM, _device

    machine(cuda=0)
    assert _device(None) == "auto" and _device("cuda:0") == "auto"  # lm-eval's default, without CUDA
    assert _device("cpu") == "cpu"
    folder = save_toy_model(tmp_path / "toy", tiny_tokenizer)
    with pytest.raises(D3llmError, match=r"^model_args dtype int8: unknown dtype"):
        D3llmLM(model=str(folder), dtype="int8")
    lm = D3llmLM(model=str(folder), device="cpu", dtype="bfloat16")
    assert lm.lm.model.dtype == torch.bfloat16
