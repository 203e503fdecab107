"""Task generators, splits, answer extraction and scoring."""

import hashlib
import json
import re

import pytest

from d3llm.errors import TaskError
from d3llm.tasks import FIXED_TEST_N, SPLITS, ArithDifficulty, ArithTask, fixed_test_set, get_task, split_of
from d3llm.tasks.arith import extract_final_number


@pytest.mark.parametrize("name", ["arith", "arith-long", "code"])
def test_generators_are_deterministic_by_seed(name):
    task = get_task(name)
    a = task.problems("test", 20, seed=3)
    assert a == task.problems("test", 20, seed=3)
    assert [p.key for p in a] != [p.key for p in task.problems("test", 20, seed=4)]


# A hash of each bundled task's fixed test set (prompts and answers): a change to a generator that
# changes the set fails here, since results scored on the old set no longer compare with new ones.
FIXED_TEST_SETS = {"arith": "cd55a224d43d0c60", "arith-long": "afabeb905b5297c4", "code": "cda0059386440b2b"}


@pytest.mark.parametrize("name", FIXED_TEST_SETS)
def test_the_fixed_test_set_is_pinned(name):
    task = get_task(name)
    problems = fixed_test_set(task)
    assert len(problems) == len({p.key for p in problems}) == FIXED_TEST_N == 600
    assert all(split_of(p.key, "d3llm-v1") == "test" for p in problems)
    digest = hashlib.sha256("\n".join(f"{p.prompt}\t{p.answer}" for p in problems).encode()).hexdigest()
    assert digest[:16] == FIXED_TEST_SETS[name], f"the fixed test set of {name} changed"
    assert problems == task.problems("test", FIXED_TEST_N, seed=0)
    assert problems[:100] == task.problems("test", 100, seed=0)  # the first n of seed 0 are its first n


@pytest.mark.parametrize("name", ["arith", "code"])
def test_splits_are_disjoint_and_deduplicated(name):
    task = get_task(name)
    keys = {split: [p.key for p in task.problems(split, 200, seed=0)] for split in SPLITS}
    for split, ks in keys.items():
        assert len(ks) == len(set(ks)) == 200, split
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["train"]) & set(keys["validation"])
    assert not set(keys["validation"]) & set(keys["test"])
    # the split of a problem does not depend on the seed that drew it
    other_seed = {p.key for p in task.problems("test", 200, seed=9)}
    assert not other_seed & set(keys["train"])


def test_arith_solutions_are_correct_and_in_range():
    task = ArithTask()
    for p in task.problems("train", 300, seed=1):
        lines = p.target.splitlines()
        assert len(lines) == task.difficulty.steps + 1
        value = None
        for line in lines[:-1]:
            lhs, rhs = line.split(" = ")
            a, op, b = lhs.split()
            assert value is None or int(a) == value  # each step uses the previous result
            value = eval(lhs)  # noqa: S307 -- our own generated digits and + - *
            assert value == int(rhs) and 0 <= value <= task.difficulty.max_value
        assert lines[-1] == f"#### {value}" and p.answer == str(value)
        assert task.score(p, p.target)


def test_arith_long_prompts_hold_examples_from_train_only():
    long, base = get_task("arith-long"), get_task("arith")
    train_keys = {p.key for p in base.problems("train", 64, seed=10_000)}
    test = long.problems("test", 10, seed=0)
    assert [p.key for p in test] == [p.key for p in base.problems("test", 10, seed=0)]
    for p in test:
        assert p.prompt.count("Question:") == long.shots + 1
        assert len(p.prompt) > 600
        shots = [block.split("\n")[0].removeprefix("Question: ") for block in p.prompt.split("\n\n")[:-1]]
        assert set(shots) <= train_keys and p.key not in shots


@pytest.mark.parametrize(
    "text, expected",
    [("12 + 5 = 17\n#### 17", "17"), ("#### 1,234", "1234"), ("#### 007", "7"), ("#### -3", "-3"),
     ("a #### 5 then #### 6", "6"), ("no answer here", None), ("####", None), ("#### ,", None)],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_arith_scoring_on_hand_written_cases():
    task = ArithTask()
    p = task.problems("test", 1, seed=0)[0]
    assert task.score(p, p.target)
    assert task.score(p, f"I think\n#### {p.answer}")
    assert not task.score(p, f"#### {int(p.answer) + 1}")
    assert not task.score(p, p.target.replace("####", "answer:"))


def test_difficulty_presets_and_bad_values():
    hard = ArithTask("hard").problems("test", 20, seed=0)
    assert max(len(p.target.splitlines()) for p in hard) == 5
    with pytest.raises(TaskError, match="steps"):
        ArithDifficulty(steps=0)
    with pytest.raises(TaskError, match="ops"):
        ArithDifficulty(ops=("/",))
    with pytest.raises(TaskError, match="unknown difficulty"):
        ArithTask("impossible")


def test_bad_task_requests():
    with pytest.raises(TaskError, match="unknown task"):
        get_task("chess")
    with pytest.raises(TaskError, match="split"):
        get_task("arith").problems("dev", 1)
    with pytest.raises(TaskError, match="distinct"):
        ArithTask(ArithDifficulty(steps=1, max_value=4, max_operand=2)).problems("test", 500)


def test_gsm8k_jsonl_loader(tmp_path):
    rows = [
        {"question": "Ann has 3 pens and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
        {"question": "Bob has 10 and gives 2 away.", "answer": "10-2=<<10-2=8>>8\n#### 8"},
        {"question": "Ann has 3 pens and buys 4. How many?", "answer": "dup\n#### 7"},
    ]
    path = tmp_path / "gsm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = get_task(f"gsm8k:{path}")
    problems = task.problems("test", 2, seed=0)
    assert sorted(p.answer for p in problems) == ["7", "8"]  # the duplicate question is dropped
    assert all("<<" not in p.target for p in problems)
    assert task.score(problems[0], problems[0].target)
    with pytest.raises(TaskError, match="n"):
        task.problems("test", 5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "no final"}\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:1: 'answer' has no final"):
        get_task(f"gsm8k:{bad}").problems("test", 1)
    with pytest.raises(TaskError, match="not found"):
        get_task(f"gsm8k:{tmp_path / 'missing.jsonl'}").problems("test", 1)


def _code_kind(problem):
    """`code`'s problem kind: the request with its numbers and argument names blanked."""
    request = problem.prompt.split("` that ", 1)[1]
    return re.sub(r"\b(x|xs|s)\b", "A", re.sub(r"\d+", "K", request))


def test_draws_keep_each_kind_of_problem_in_its_share():
    """`problems` keeps distinct ones, so `code`'s kinds with few variants run out (under 3% of
    12800 train rows for `True if x is divisible by K`); `draws` repeats them instead."""
    task = get_task("code")
    kind = "returns True if A is divisible by K, else False."
    distinct = [_code_kind(p) for p in task.problems("train", 12800, seed=2)]
    drawn = task.draws("train", 12800, seed=2)
    assert distinct.count(kind) / 12800 < 0.03
    assert 0.05 < [_code_kind(p) for p in drawn].count(kind) / 12800 < 0.09  # 1 of 15 kinds
    assert len({p.key for p in drawn}) < 12800  # repeats
    assert drawn[:50] == task.draws("train", 50, seed=2) and drawn[:50] != task.draws("train", 50, seed=3)
    test_keys = {p.key for p in task.problems("test", 200, seed=0)}
    assert not test_keys & {p.key for p in drawn}  # still the train split only


def test_draws_of_arith_long_and_gsm8k(tmp_path):
    long = get_task("arith-long").draws("validation", 5, seed=1)
    assert len(long) == 5 and all(p.prompt.count("Question:") == 5 for p in long)
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "q?", "answer": "1+1=2\n#### 2"}) + "\n")
    task = get_task(f"gsm8k:{path}")
    assert [p.answer for p in task.draws("test", 3)] == ["2", "2", "2"]
    with pytest.raises(TaskError, match="`n` must be >= 0"):
        task.draws("test", -1)
    with pytest.raises(TaskError, match="`n` must be >= 0"):
        get_task("code").draws("test", -1)
