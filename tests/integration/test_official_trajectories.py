"""The d3LLM authors' trajectory datasets: import (snapshots -> rank vectors), distil from the
import, export back, from a folder and from a hub dataset id; their errors in one line.

The test writes a tiny dataset in their schema (hao-ai-lab/d3LLM
`d3llm/d3llm_LLaDA/distill_1_data_prepare/d3llm_llada_generate_multinode.py`: `Dataset.from_dict`
of idx, question, prompt_ids, trajectory, final_output, generated_text, llm_answer, gt_answer,
is_correct, then `save_to_disk`) over a toy teacher's tokenizer.
"""

from __future__ import annotations

import json
import random

import datasets
import pytest

from d3llm.models.tokenizer import encode_example, load_tokenizer, prompt_ids
from d3llm.tasks import get_task
from d3llm.trajectory import store
from d3llm.trajectory.official import OfficialFormatError, rank_from_snapshots
from tests.conftest import run_cli, save_toy_model
from tests.integration.test_hub import add_to_hub_cache

CANVAS = 16


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_tokenizer):
    return save_toy_model(tmp_path_factory.mktemp("teacher") / "toy", tiny_tokenizer)


def their_rows(tokenizer, n: int = 12, seed: int = 0) -> tuple[dict, list[list[int]]]:
    """Columns in the authors' schema, one decode order per row (one column per step), and those orders."""
    rng, mask = random.Random(seed), tokenizer.mask_token_id
    columns = {name: [] for name in ("idx", "question", "prompt_ids", "trajectory", "final_output",
                                     "generated_text", "llm_answer", "gt_answer", "is_correct")}
    orders = []
    for i, problem in enumerate(get_task("arith").problems("train", n, seed)):
        prompt = prompt_ids(tokenizer, problem.prompt)
        response = encode_example(tokenizer, problem, 40)["input_ids"][-40:][:CANVAS]
        order = rng.sample(range(CANVAS), CANVAS)  # order[s] = the column committed at step s
        canvas, snapshots = [mask] * CANVAS, []
        for column in order:
            canvas[column] = response[column]
            snapshots.append(prompt + canvas)
        rank = [0] * CANVAS
        for step, column in enumerate(order):
            rank[column] = step
        orders.append(rank)
        for name, value in (("idx", 100 + i), ("question", problem.prompt), ("prompt_ids", prompt),
                            ("trajectory", snapshots), ("final_output", prompt + response),
                            ("generated_text", tokenizer.decode(prompt + response, skip_special_tokens=True)),
                            ("llm_answer", problem.answer if i % 3 else None), ("gt_answer", problem.answer),
                            ("is_correct", bool(i % 3))):
            columns[name].append(value)
    return columns, orders


@pytest.fixture(scope="module")
def theirs(tmp_path_factory, teacher):
    columns, orders = their_rows(load_tokenizer(teacher))
    folder = tmp_path_factory.mktemp("theirs") / "trajectory_dataset"
    datasets.Dataset.from_dict(columns).save_to_disk(str(folder))
    return folder, columns, orders


def test_import_gives_their_decode_order_and_correctness(tmp_path, monkeypatch, capsys, teacher, theirs):
    folder, columns, orders = theirs
    code, out, err = run_cli(monkeypatch, capsys, "trajectories", "import", folder, "--teacher", teacher,
                             "--out", tmp_path / "traj", "--chunk-size", "5")
    assert code in (0, None), err
    rows, manifest = store.load(tmp_path / "traj", keep="all")
    assert manifest["num_records"] == 12 and manifest["decode_config"]["max_new_tokens"] == CANVAS
    assert manifest["imported_from"]["source"] == str(folder)
    assert [r["rank"] for r in rows] == orders
    assert [r["correct"] for r in rows] == columns["is_correct"]
    assert [r["prompt_ids"] + r["final_ids"] for r in rows] == columns["final_output"]
    assert all(r["target_ids"] == r["final_ids"] for r in rows)  # the teacher's own answers are the targets
    assert len(store.load(tmp_path / "traj")[0]) == sum(columns["is_correct"])  # their correctness filter
    # run again: nothing is redone, nothing changes
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "traj" / "chunks").iterdir()}
    assert len(stamps) == 3
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", "import", folder, "--teacher", teacher,
                           "--out", tmp_path / "traj", "--chunk-size", "5")
    assert code in (0, None), err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "traj" / "chunks").iterdir()} == stamps


def test_distil_from_an_import_end_to_end(tmp_path, monkeypatch, capsys, teacher, theirs):
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", "import", theirs[0], "--teacher", teacher,
                           "--out", tmp_path / "traj")
    assert code in (0, None), err
    sets = ["steps=6", "batch_size=4", "lr=3e-3", "warmup_steps=1", "threads=1", "save_every=6", "windows=[8]"]
    code, out, err = run_cli(monkeypatch, capsys, "distill", "--teacher", teacher, "--trajectories",
                             tmp_path / "traj", "--out", tmp_path / "student", *[x for s in sets for x in ("--train-set", s)])
    assert code in (0, None), err
    provenance = json.loads((tmp_path / "student" / "provenance.json").read_text())
    assert provenance["config"]["eval_every"] == 0  # their prompts are no task of ours to validate on
    from d3llm.models import load_model

    assert load_model(tmp_path / "student", device="cpu").facts.family == "llada"


def test_export_writes_their_schema_back(tmp_path, monkeypatch, capsys, teacher, theirs):
    folder, columns, _ = theirs
    run_cli(monkeypatch, capsys, "trajectories", "import", folder, "--teacher", teacher, "--out", tmp_path / "traj")
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", "export", tmp_path / "traj", "--format",
                           "d3llm-official", "--out", tmp_path / "back")
    assert code in (0, None), err
    back = datasets.load_from_disk(str(tmp_path / "back"))
    assert set(back.column_names) == set(columns)
    for name in ("prompt_ids", "trajectory", "final_output", "is_correct", "generated_text"):
        assert back[name] == columns[name], name
    assert not list(tmp_path.glob(".back.tmp-*"))  # the staging folder is gone
    # an existing non-empty --out is refused, and left alone
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", "export", tmp_path / "traj", "--out", tmp_path / "back")
    assert code == 2 and "not an empty folder" in err and len(err.strip().splitlines()) == 1


def test_export_of_our_own_rollouts_names_the_problems(tmp_path, teacher):
    from d3llm.trajectory.official import export_official
    from d3llm.trajectory.rollout import run

    ours = run(teacher, {"arith": 3}, tmp_path / "ours", max_new_tokens=32, block_size=8, chunk_size=4, progress=False)
    back = datasets.load_from_disk(str(export_official(ours, tmp_path / "back")))
    problems = get_task("arith").problems("train", 3, 0)
    assert back["question"] == [p.prompt for p in problems] and back["gt_answer"] == [p.answer for p in problems]
    rows, _ = store.load(ours, keep="all")
    # snapshot s holds exactly the columns of rank <= s
    mask = load_tokenizer(teacher).mask_token_id
    P = len(rows[0]["prompt_ids"])
    first = back["trajectory"][0]
    assert [sum(t != mask for t in step[P:]) for step in first] == list(range(1, 33))


def test_an_import_by_hub_dataset_id(tmp_path, monkeypatch, capsys, teacher, theirs):
    add_to_hub_cache(tmp_path / "hub", "d3LLM/trajectory_data_toy", theirs[0], repo_type="dataset")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", "import", "d3LLM/trajectory_data_toy",
                           "--teacher", teacher, "--out", tmp_path / "traj")
    assert code in (0, None), err
    assert [r["rank"] for r in store.load(tmp_path / "traj", keep="all")[0]] == theirs[2]
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", "import", "d3LLM/not_cached",
                           "--teacher", teacher, "--out", tmp_path / "t2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "d3LLM/not_cached" in err and "HF_HUB_OFFLINE" in err


def test_several_columns_in_one_step_are_ordered_left_to_right():
    M = 9
    prompt, final = [1, 2], [1, 2, 5, 6, 7, 8]
    steps = [[1, 2, M, 6, M, 8], [1, 2, 5, 6, M, 8], [1, 2, 5, 6, 7, 8]]
    assert rank_from_snapshots(prompt, steps, final, M, 0) == [2, 0, 3, 1]


@pytest.mark.parametrize("steps, final, expect", [
    ([[1, 9, 9], [1, 4, 5]], [1, 4, 6], "not the finished final_output"),
    ([[1, 4, 9], [1, 9, 5], [1, 4, 5]], [1, 4, 5], "masked again"),
    ([[1, 4], [1, 4, 5]], [1, 4, 5], "whole sequence"),
    ([[2, 4, 5]], [2, 4, 5], "does not start with prompt_ids"),
])
def test_inconsistent_rows_are_refused(steps, final, expect):
    with pytest.raises(OfficialFormatError, match=expect):
        rank_from_snapshots([1], steps, final, 9, 7)


def test_a_dataset_of_another_format_is_one_line(tmp_path, monkeypatch, capsys, teacher):
    datasets.Dataset.from_dict({"idx": [0], "text": ["hi"]}).save_to_disk(str(tmp_path / "other"))
    capsys.readouterr()  # the test's own save_to_disk progress bar
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", "import", tmp_path / "other", "--teacher", teacher,
                           "--out", tmp_path / "traj")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing column(s) prompt_ids" in err
    assert not (tmp_path / "traj").exists()
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", "export", tmp_path / "x", "--format", "jsonl",
                           "--out", tmp_path / "y")
    assert code == 2 and "`--format` must be d3llm-official" in err


def test_an_import_from_parquet_files(tmp_path, teacher, theirs):
    """The Hub serves datasets as Parquet files (data/train-*.parquet): the same rows come in."""
    from d3llm.trajectory.official import import_official

    _, columns, orders = theirs
    data = datasets.Dataset.from_dict(columns)
    (tmp_path / "repo" / "data").mkdir(parents=True)
    data.select(range(5)).to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00002.parquet"))
    data.select(range(5, 12)).to_parquet(str(tmp_path / "repo" / "data" / "train-00001-of-00002.parquet"))
    import_official(str(tmp_path / "repo"), tmp_path / "traj", str(teacher), chunk_size=4)
    rows, _ = store.load(tmp_path / "traj", keep="all")
    assert [r["rank"] for r in rows] == orders and [r["correct"] for r in rows] == columns["is_correct"]


def test_teacher_by_hub_id_for_import_and_distill(tmp_path, monkeypatch, capsys, teacher, theirs):
    """`--teacher ORG/NAME` (and so the recipe's init_from / tokenizer_from) through the hub cache."""
    add_to_hub_cache(tmp_path / "hub", "toy-org/teacher", teacher)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", "import", theirs[0], "--teacher", "toy-org/teacher",
                           "--out", tmp_path / "traj")
    assert code in (0, None), err
    sets = ["steps=2", "batch_size=4", "threads=1", "save_every=2", "windows=[8]"]
    code, _, err = run_cli(monkeypatch, capsys, "distill", "--teacher", "toy-org/teacher", "--trajectories",
                           tmp_path / "traj", "--out", tmp_path / "student", *[x for s in sets for x in ("--train-set", s)])
    assert code in (0, None), err
    provenance = json.loads((tmp_path / "student" / "provenance.json").read_text())
    assert provenance["config"]["init_from"] == "toy-org/teacher"
    # the snapshot (symlinks into blobs/) has the folder's fingerprint: an import by id distils by path too
    assert store.read_manifest(tmp_path / "traj")["teacher_fingerprint"] == store.fingerprint(teacher)
