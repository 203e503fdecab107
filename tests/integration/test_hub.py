"""Hugging Face hub ids as model names, offline, from a hub cache the test builds.

The cache has the layout huggingface_hub reads (`models--ORG--NAME/{refs/main,
snapshots/COMMIT/FILE -> ../../blobs/SHA, blobs/SHA}`), holds an official-layout (LLaDA,
sharded) export of a toy model, and is used with HF_HUB_OFFLINE=1: no network is touched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from pathlib import Path

import pytest

from d3llm.errors import ModelLoadError
from d3llm.models import hub
from tests.conftest import run_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, ref: str = "main",
                     repo_type: str = "model") -> Path:
    """Put `folder`'s files into `cache` as huggingface_hub stores a downloaded snapshot."""
    repo = cache / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / file.name)
    (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def official(model_dir, tmp_path_factory):
    """The toy LLaDA model exported in the official LLaDA layout, in 2 shards."""
    from d3llm.models.checkpoint import export_model

    return export_model(model_dir, tmp_path_factory.mktemp("official") / "llada", layout="llada", shards=2)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, official):
    cache = tmp_path / "hf" / "hub"
    add_to_hub_cache(cache, "toy-org/toy-llada", official)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_parse_hub_id():
    assert hub.parse_hub_id("d3LLM/d3LLM_LLaDA") == hub.HubId("d3LLM/d3LLM_LLaDA")
    assert hub.parse_hub_id("GSAI-ML/LLaDA-8B-Instruct@v1.0") == hub.HubId("GSAI-ML/LLaDA-8B-Instruct", "v1.0")
    for not_an_id in ("tiny-teacher", "a/b/c", "/abs/path", "../x/y", "org/na me", "org--x/y", "org/", "@x"):
        assert hub.parse_hub_id(not_an_id) is None, not_an_id


def test_generate_by_hub_id_matches_the_folder(offline_cache, official, monkeypatch, capsys):
    prompt = "What is 2 + 3?"
    base = ("generate", prompt, "--max-new-tokens", "16", "--device", "cpu")
    code, by_path, err = run_cli(monkeypatch, capsys, *base, "--model", official)
    assert code == 0, err
    for name in ("toy-org/toy-llada", "toy-org/toy-llada@main", f"toy-org/toy-llada@{COMMIT}"):
        code, by_id, err = run_cli(monkeypatch, capsys, *base, "--model", name)
        assert code == 0, err
        assert by_id == by_path


def test_the_python_api_and_the_loader_take_hub_ids(offline_cache, official):
    import d3llm
    from d3llm.models import load_model, resolve_model

    folder = resolve_model("toy-org/toy-llada")
    assert folder.parent.name == "snapshots" and (folder / "model.safetensors.index.json").is_file()
    by_id = d3llm.generate("toy-org/toy-llada", ["What is 4 + 4?"], method="vanilla", max_new_tokens=8, device="cpu")
    by_path = d3llm.generate(official, ["What is 4 + 4?"], method="vanilla", max_new_tokens=8, device="cpu")
    assert by_id.output.sequences == by_path.output.sequences
    assert load_model("toy-org/toy-llada", device="cpu").recipe is None  # not a published checkpoint


@pytest.mark.parametrize("name", ["toy-org/not-cached", "toy-org/toy-llada@v9"])
def test_an_id_that_is_not_cached_is_one_line(offline_cache, monkeypatch, capsys, name):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "hi", "--model", name, "--device", "cpu")
    assert code == 2 and out == ""
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err
    assert name in line and "HF_HUB_OFFLINE" in line and "not in the Hugging Face cache" in line


def test_an_existing_folder_wins_over_a_hub_id(tmp_path, monkeypatch, official):
    from d3llm.models import resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    os.symlink(official, tmp_path / "org" / "model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("org/model") == Path("org/model")


def test_only_config_weights_and_tokenizer_files_are_fetched(monkeypatch, tmp_path):
    seen = {}

    def fake_snapshot_download(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert hub.snapshot("d3LLM/d3LLM_LLaDA@abc") == tmp_path
    assert seen["repo_id"] == "d3LLM/d3LLM_LLaDA" and seen["revision"] == "abc"
    assert seen["cache_dir"] == tmp_path / "home" / "hub" and seen["local_files_only"] is False

    def fetched(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in seen["allow_patterns"])

    for wanted in ("config.json", "model-00001-of-00006.safetensors", "model.safetensors.index.json",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert fetched(wanted), wanted
    for unwanted in ("modeling_llada.py", "configuration_llada.py", "pytorch_model.bin", "README.md", "train.pt"):
        assert not fetched(unwanted), unwanted
    # a dataset: save_to_disk folders or Parquet files, not the raw per-GPU JSON parts
    hub.snapshot("d3LLM/trajectory_data_llada_32", repo_type="dataset", what="dataset")
    assert seen["repo_type"] == "dataset"
    for wanted in ("data/train-00000-of-00004.parquet", "trajectory_dataset/data-00000-of-00003.arrow",
                   "trajectory_dataset/state.json", "trajectory_dataset/dataset_info.json"):
        assert fetched(wanted), wanted
    for unwanted in ("trajectory_part_0.json", "README.md", "d3llm_generate.py"):
        assert not fetched(unwanted), unwanted


def test_published_checkpoints_decode_with_their_papers_settings(tmp_path, monkeypatch, official, capsys):
    from d3llm.models import load_model

    cache = tmp_path / "hub"
    add_to_hub_cache(cache, "d3LLM/d3LLM_LLaDA", official)
    add_to_hub_cache(cache, "GSAI-ML/LLaDA-8B-Instruct", official)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    student = load_model("d3LLM/d3LLM_LLaDA", device="cpu")
    assert student.recipe == ("d3llm", {"threshold": 0.5, "block_size": 32, "max_new_tokens": 256})
    # a folder inside the hub cache is recognised too
    assert load_model(student.path, device="cpu").recipe == student.recipe
    base = ("generate", "What is 2 + 3?", "--max-new-tokens", "16", "--device", "cpu", "--stats")
    code, _, err = run_cli(monkeypatch, capsys, *base, "--model", "d3LLM/d3LLM_LLaDA")
    assert code == 0 and err.startswith("[d3llm]"), err
    code, _, err = run_cli(monkeypatch, capsys, *base, "--model", "GSAI-ML/LLaDA-8B-Instruct")
    assert code == 0 and err.startswith("[vanilla]"), err
    code, _, err = run_cli(monkeypatch, capsys, *base, "--model", "d3LLM/d3LLM_LLaDA", "--method", "fast-dllm")
    assert code == 0 and err.startswith("[fast-dllm]"), err


def test_a_hub_id_that_is_not_a_model_repo(tmp_path, monkeypatch):
    from d3llm.models import resolve_model

    empty = tmp_path / "files"
    empty.mkdir()
    (empty / "README.md").write_text("no model here")
    add_to_hub_cache(tmp_path / "hub", "org/readme-only", empty)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model("org/readme-only")


def test_every_published_entry_is_a_valid_decode_recipe_for_its_family():
    from d3llm.decode.config import for_model, methods_for, resolve_config
    from d3llm.models.lm import FAMILIES
    from d3llm.models.published import published, published_models

    entries = published_models()
    assert len({m.repo_id.lower() for m in entries}) == len(entries)
    for entry in entries:
        assert entry.family in FAMILIES and entry.method in methods_for(entry.family), entry
        config = for_model(resolve_config(None, entry.family, (entry.method, entry.settings)), entry.family, 32)
        assert config.method == entry.method
        assert all(config.settings()[k] == v for k, v in entry.settings.items()), entry
        assert published(entry.repo_id.upper() + "@some-branch") is entry
    assert published("tiny-teacher") is None and published("org/unknown") is None


def test_models_published_lists_the_table(monkeypatch, capsys, tmp_path, official):
    add_to_hub_cache(tmp_path / "hub", "d3LLM/d3LLM_Dream", official)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code, out, err = run_cli(monkeypatch, capsys, "models", "--published")
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:4] for line in out.splitlines()[1:] if "/" in line.split()[0]}
    assert rows["d3LLM/d3LLM_LLaDA"] == ["llada", "8.02B", "d3llm"]
    assert rows["GSAI-ML/LLaDA-8B-Instruct"] == ["llada", "8.02B", "vanilla"]
    assert rows["Efficient-Large-Model/Fast_dLLM_v2_7B"] == ["block", "7.62B", "fast-dllm-v2"]
    assert {"d3LLM/d3LLM_Dream", "d3LLM/d3LLM_Dream_Coder", "Dream-org/Dream-v0-Instruct-7B"} <= set(rows)
    cells = [re.split(r"\s{2,}", line) for line in out.splitlines()[1:] if "/" in line.split()[0]]
    cached = {row[0]: row[5] for row in cells}
    assert cached["d3LLM/d3LLM_Dream"] == "yes" and cached["d3LLM/d3LLM_LLaDA"] == "no"


def test_the_server_defaults_to_a_published_recipe(tmp_path, monkeypatch, official):
    from d3llm.models import load_model
    from d3llm.serve.service import ModelService

    add_to_hub_cache(tmp_path / "hub", "d3LLM/d3LLM_Dream", official)  # a LLaDA toy: family differs
    add_to_hub_cache(tmp_path / "hub", "d3LLM/d3LLM_LLaDA", official)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_model("d3LLM/d3LLM_LLaDA", device="cpu")
    service = ModelService(lm, None, None, _limits(), "m")
    config = service.decode_config(max_tokens=16)
    assert (config.method, config.strategy.threshold, config.max_new_tokens) == ("d3llm", 0.5, 16)
    assert ModelService(lm, None, "vanilla", _limits(), "m").decode_config(max_tokens=16).method == "vanilla"
    assert load_model("d3LLM/d3LLM_Dream", device="cpu").recipe is None  # a Dream recipe is not applied to LLaDA


def _limits():
    from d3llm.serve.service import Limits

    return Limits(None, 64, 64)


def test_the_server_names_a_hub_model_by_its_id(offline_cache):
    from d3llm.models import load_model
    from d3llm.serve import create_app

    app = create_app(load_model("toy-org/toy-llada@main", device="cpu"))
    try:
        assert app.state.service.model_id == "toy-org/toy-llada"
    finally:
        app.state.service.scheduler.close()


def test_lm_eval_model_args_take_a_hub_id_and_its_recipe(tmp_path, monkeypatch, official):
    from d3llm.eval.lm_eval_adapter import D3llmLM

    add_to_hub_cache(tmp_path / "hub", "d3LLM/d3LLM_LLaDA", official)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = D3llmLM(model="d3LLM/d3LLM_LLaDA", device="cpu")
    assert (model.config.method, model.config.strategy.threshold, model.config.block_size) == ("d3llm", 0.5, 32)
    assert D3llmLM(model="d3LLM/d3LLM_LLaDA", method="vanilla", device="cpu").config.method == "vanilla"


def test_a_real_process_by_hub_id_offline(tmp_path, official):
    """In a fresh process (what libraries log to the real stderr is seen): a cached id decodes
    with no warning, an uncached one is one line, exit 2."""
    import subprocess
    import sys

    add_to_hub_cache(tmp_path / "hub", "toy-org/toy-llada", official)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "error::FutureWarning"}
    base = [sys.executable, "-m", "d3llm.cli", "generate", "--device", "cpu", "--max-new-tokens", "16", "hi"]
    done = subprocess.run([*base, "--model", "toy-org/toy-llada"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    done = subprocess.run([*base, "--model", "toy-org/elsewhere"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "toy-org/elsewhere" in done.stderr
