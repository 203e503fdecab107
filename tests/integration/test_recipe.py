"""Decode recipes: chosen on validation problems by `d3llm tune` (a fixed grid, a fixed rule),
stored beside the weights, and used by default (docs/reference.md, "Decode recipes")."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from d3llm.decode import resolve_config
from d3llm.errors import D3llmError
from d3llm.eval.tune import LEAN, TOLERANCE, Point, choose, grid_for, per_task, siblings
from d3llm.models import bundled_models, load_model
from d3llm.models.catalog import describe, models_table
from d3llm.models.recipe import RECIPE_FILE, Recipe, read_recipe, write_recipe
from tests.conftest import run_cli


@pytest.fixture
def folder(tmp_path):
    """A copy of a bundled block student, without a recipe."""
    copy = tmp_path / "student"
    shutil.copytree(bundled_models()["tiny-block-d3llm"], copy)
    (copy / RECIPE_FILE).unlink(missing_ok=True)
    return copy


def point(method, accuracy, speed, **settings):
    return Point(method, settings, "float32", {"arith": (int(accuracy), 100)}, speeds=[speed, speed + 5, speed - 5])


def test_the_rule_takes_the_fastest_point_within_the_tolerance_of_the_best():
    best, close, fast_but_worse = point("d3llm", 90, 100), point("d3llm", 90 - TOLERANCE, 300), point("d3llm", 85, 900)
    assert choose([best, close, fast_but_worse]) is close
    assert choose([best]) is best
    assert point("d3llm", 90, 100).tokens_per_second == 100  # the median of the rounds


def test_the_rule_on_each_task_picks_among_the_chosen_points_thresholds(monkeypatch):
    """Per task: the chosen point's siblings within TOLERANCE of the best any point reached on
    the task; the fastest there (timed on that task alone); listed only where it differs."""
    import d3llm.eval.tune as tune_module

    def at(threshold, arith, code):
        return Point("d3llm", {"threshold": threshold, "future_masks": "cached"}, "bfloat16",
                     {"arith": (arith, 100), "code": (code, 100)})

    chosen = at(0.5, 88, 94)
    family = [at(0.3, 90, 94), chosen, at(0.8, 85, 96), at(1.2, 80, 96)]
    other = Point("vanilla", {}, "float32", {"arith": (90, 100), "code": (96, 100)})  # sets the best only
    timed = []

    def fake_timing(runs, tasks):
        timed.append(([p.settings["threshold"] for _, p in runs], [t.name for t in tasks]))
        return [[10.0 * p.settings["threshold"]] * 3 for _, p in runs]  # higher threshold, faster

    monkeypatch.setattr(tune_module, "time_points", fake_timing)
    tasks = [type("T", (), {"name": name})() for name in ("arith", "code")]
    own = per_task(None, chosen, family, [*family, other], tasks)
    assert own == {"arith": {"threshold": 0.3}, "code": {"threshold": 1.2}}  # only what differs from chosen's
    assert timed == [([0.8, 1.2], ["code"])]  # arith: one sibling within 1 point, nothing to time
    assert [p.settings["threshold"] for p in siblings(chosen)] == [0.3, 0.5, 0.8, 1.2]
    assert all(p.settings["future_masks"] == "cached" and p.dtype == "bfloat16" for p in siblings(chosen))
    assert siblings(Point("vanilla", {}, "float32")) == [Point("vanilla", {}, "float32")]
    lean = Point("d3llm-cache", {"threshold": 0.5, **LEAN}, "bfloat16")  # a delayed cache: both schedules
    cached = siblings(lean)
    assert [p.settings["threshold"] for p in cached] == [0.3, 0.5, 0.8, 1.2] * 2 and cached[1].key() == lean.key()
    assert [p.settings for p in cached[4:]] == [{"threshold": t} for t in (0.3, 0.5, 0.8, 1.2)]  # as the grid has it
    assert [p.settings for p in siblings(Point("d3llm-cache", {"threshold": 0.3}, "float32"))][4] == \
        {"threshold": 0.3, **LEAN}
    family = [Point("d3llm-cache", p.settings, "bfloat16", {"arith": (90 if p in cached[4:] else 88, 100)})
              for p in cached]
    family[1] = lean
    lean.scores = {"arith": (88, 100)}
    monkeypatch.setattr(tune_module, "time_points", lambda runs, tasks: [[1.0] * 3 for _ in runs])
    assert per_task(None, lean, family, family, tasks[:1]) == {  # arith wants the full schedule, written out
        "arith": {"threshold": 0.3, "refresh_while_waiting": True, "future_masks": "forward"}}
    full = Point("d3llm-cache", {"threshold": 0.5}, "float32", {"arith": (86, 100)})  # the other way round
    leaner = [Point("d3llm-cache", {"threshold": t, **LEAN}, "float32", {"arith": (90, 100)}) for t in (0.3, 0.8)]
    assert per_task(None, full, [full, *leaner], [full, *leaner], tasks[:1]) == {"arith": {"threshold": 0.3, **LEAN}}
    family[1].scores = {"arith": (70, 100), "code": (70, 100)}  # the chosen point itself far off on both
    assert per_task(None, family[1], family[1:2], [*family, other], tasks) == {}  # no sibling close: recipe kept


def test_a_recipe_lists_settings_of_its_own_for_some_tasks(folder, monkeypatch, capsys, tmp_path):
    """`eval` decodes a task the recipe lists with the task's settings, every other with the
    recipe's; commands without a task (generate) use the recipe's; `d3llm models` shows both."""
    recipe = Recipe("d3llm-block", {"threshold": 0.5}, "float32", {"rule": "test"}, {"code": {"threshold": 1.2}})
    write_recipe(folder, recipe)
    assert read_recipe(folder) == recipe
    assert recipe.text() == "d3llm-block threshold=0.5 (float32); code: threshold=1.2"
    lines = models_table([describe(folder, "student")])
    assert lines[-2:] == ["  student: d3llm-block threshold=0.5 (float32)", "    on code: threshold=1.2"]
    lm = load_model(folder)
    assert lm.recipe == ("d3llm-block", {"threshold": 0.5}) == lm.recipe_for("arith")
    assert lm.recipe_for("code") == ("d3llm-block", {"threshold": 1.2})
    code, _, err = run_cli(monkeypatch, capsys, "eval", "-m", str(folder), "--task", "arith", "--task", "code",
                           "--n", "2", "--json", tmp_path / "r.json")
    assert code in (0, None), err
    used = {t: json.loads((tmp_path / f"r-{t}.json").read_text())["decode_config"]["threshold"]
            for t in ("arith", "code")}
    assert used == {"arith": 0.5, "code": 1.2}
    code, _, err = run_cli(monkeypatch, capsys, "eval", "-m", str(folder), "--task", "code", "--n", "2",
                           "--threshold", "0.7", "--json", tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["decode_config"]["threshold"] == 0.7  # told: wins
    for damaged in ('{"method": "block", "tasks": []}', '{"method": "block", "tasks": {"code": 1.2}}'):
        (folder / RECIPE_FILE).write_text(damaged)
        with pytest.raises(D3llmError, match="`tasks` must map task names to settings"):
            read_recipe(folder)


def test_a_stored_recipe_is_what_the_model_decodes_with_unless_a_method_is_named(folder):
    write_recipe(folder, Recipe("d3llm-block", {"threshold": 0.8}, "bfloat16", {"rule": "test"}))
    lm = load_model(folder)
    assert lm.recipe == ("d3llm-block", {"threshold": 0.8}) and lm.model.dtype == torch.bfloat16  # dtype auto
    assert load_model(folder, dtype="float32").model.dtype == torch.float32  # an explicit dtype wins
    assert resolve_config(None, "block", lm.recipe).strategy.threshold == 0.8
    assert resolve_config("block", "block", lm.recipe).method == "block"  # a named method: its preset
    assert describe(folder).recipe == "d3llm-block threshold=0.8 (bfloat16)"
    assert any("d3llm-block threshold=0.8" in line for line in models_table([describe(folder, "student")]))


def test_recipes_are_never_replaced_silently_and_damage_is_named(folder):
    write_recipe(folder, Recipe("d3llm-block"))
    with pytest.raises(D3llmError, match="exists; give --overwrite"):
        write_recipe(folder, Recipe("block"))
    write_recipe(folder, Recipe("block"), overwrite=True)
    assert read_recipe(folder).method == "block"
    for damaged in ('{"settings": {}}', '{"method": 3}', '{"method": "block", "dtype": 16}', "[1]", "{"):
        (folder / RECIPE_FILE).write_text(damaged)
        with pytest.raises(D3llmError, match=RECIPE_FILE):
            read_recipe(folder)
    assert describe(folder).recipe == f"damaged {RECIPE_FILE}"


def test_a_recipe_whose_settings_do_not_decode_the_model_is_refused_at_load_naming_the_file(folder):
    """Well-formed JSON with a bad setting: the error names the recipe file (and the task), not a
    setting the user seems to have given."""
    bad = [(Recipe("d3llm-block", {"threshold": 42}), "its settings"),
           (Recipe("d3llm-block", {"threshold": 0.5}, tasks={"code": {"thresh": 1.0}}), "tasks.code"),
           (Recipe("ar"), "its settings"),  # a method of another family
           (Recipe("d3llm-block", {"refresh_interval": 4}), "its settings")]  # a setting the method ignores
    for recipe, where in bad:
        write_recipe(folder, recipe, overwrite=True)
        with pytest.raises(D3llmError, match=f"{RECIPE_FILE} \\(`?{where}`?\\)"):
            load_model(folder)
    write_recipe(folder, Recipe("d3llm-block", {"threshold": 0.5}, tasks={"code": {"threshold": 1.2}}), overwrite=True)
    assert load_model(folder).recipe_for("code") == ("d3llm-block", {"threshold": 1.2})


def test_the_grid_covers_the_models_presets_and_the_lean_cache_schedule():
    lm = load_model("tiny-d3llm")
    grid = grid_for(lm)
    assert {p.method for p in grid} == set(describe(lm.path).methods)
    lean = [p for p in grid if p.settings.get("future_masks") == "cached"]
    assert lean and all(p.method == "d3llm-cache" and p.settings["refresh_while_waiting"] is False for p in lean)
    assert {p.settings["threshold"] for p in grid} == {0.3, 0.5, 0.8, 1.2}


def test_tune_scores_validation_problems_and_saves_the_recipe(monkeypatch, capsys, folder, tmp_path):
    monkeypatch.chdir(tmp_path)  # its scores go to runs/tune-student here
    code, out, err = run_cli(monkeypatch, capsys, "tune", str(folder), "--task", "arith", "--task", "code",
                             "--n", "1", "--save")
    assert code in (0, None), err
    recipe, grid = read_recipe(folder), grid_for(load_model(folder, dtype="float32"))  # tune's default dtype
    assert recipe.method in describe(folder).methods and recipe.chosen["split"] == "validation"
    points = recipe.chosen["points"]
    assert all(p["n"] == 2 and set(p["tasks"]) == {"arith", "code"} for p in points)
    chosen = Point(recipe.method, recipe.settings, recipe.dtype)
    keys = [Point(p["method"], p["settings"], p["dtype"]).key() for p in points]
    assert keys[: len(grid)] == [p.key() for p in grid] and points[len(grid)]["dtype"] == "bfloat16"  # the twin
    assert {p.key() for p in siblings(chosen)} <= set(keys)  # the siblings the rule per task looked at, scored
    for task, own in recipe.tasks.items():  # a task's own settings: a sibling within the tolerance there
        assert task in ("arith", "code") and set(own) == {"threshold"}
    assert f"recipe: {recipe.text()}" in out and "wrote" in out
    assert any("threshold=0.3" in row and "float32" in row for row in out.splitlines())  # a point a row, unwrapped
    code, _, err = run_cli(monkeypatch, capsys, "tune", str(folder), "--task", "arith", "--n", "2", "--save")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err  # refused before scoring
    code, _, err = run_cli(monkeypatch, capsys, "tune", str(folder), "--n", "0")
    assert code == 2 and "`--n` must be >= 1" in err
    assert json.loads((folder / RECIPE_FILE).read_text())["method"] == recipe.method


def test_a_killed_tune_resumes_from_the_scores_it_kept(monkeypatch, capsys, folder, tmp_path):
    """Each point's score is written as it finishes; run again, only the missing points are scored."""
    import d3llm.eval.tune as tune_module

    real, calls = tune_module.score, []

    def dies_on_the_third(lm, point, tasks, n, advance=None):
        calls.append(point.label())
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while scoring the third point
        return real(lm, point, tasks, n, advance)

    monkeypatch.setattr(tune_module, "score", dies_on_the_third)
    args = ("tune", str(folder), "--task", "arith", "--n", "2", "--out", tmp_path / "t")
    code, _, _ = run_cli(monkeypatch, capsys, *args)
    assert code == 130  # interrupted
    kept = json.loads((tmp_path / "t" / "scores.json").read_text())
    assert len(kept["scores"]) == 2 and kept["settings"]["n_per_task"] == 2

    calls.clear()
    monkeypatch.setattr(tune_module, "score", lambda *a, **k: (calls.append(a[1].label()), real(*a, **k))[1])
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None), err
    grid = grid_for(load_model(folder))
    assert len(calls) == len(grid) - 2 + 1  # the grid less the two kept, and the bfloat16 point
    assert len(json.loads((tmp_path / "t" / "scores.json").read_text())["scores"]) == len(grid) + 1

    code, _, err = run_cli(monkeypatch, capsys, "tune", str(folder), "--task", "arith", "--n", "3", "--out", tmp_path / "t")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds the scores of another tune (n_per_task 2 there, 3 now)" in err

    kept = json.loads((tmp_path / "t" / "scores.json").read_text())
    for damaged in ({**kept, "scores": {"x": [1]}}, {**kept, "scores": {"x": {"arith": [1]}}}, {**kept, "scores": []},
                    [1], {"settings": None}):
        (tmp_path / "t" / "scores.json").write_text(json.dumps(damaged))
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "scores.json" in err, err


def test_a_grid_is_scored_in_the_dtype_the_model_was_loaded_in(folder):
    """A grid scored in bfloat16 is labelled so and has no float32 -> bfloat16 step to add."""
    from d3llm.eval.tune import tune
    from d3llm.tasks import get_task

    lm = load_model(folder, dtype="bfloat16")
    recipe, points = tune(lm, [get_task("arith")], n=1)
    assert len(points) == len(grid_for(lm)) and {p.dtype for p in points} == {"bfloat16"}
    assert recipe.dtype == "bfloat16"


def test_the_commands_load_a_model_in_its_recipe_dtype_unless_told(monkeypatch, capsys, folder, tmp_path):
    """`--dtype auto` (the default) reaches `load_model` as "auto": the recipe's dtype on a CPU;
    a dtype named on the command line wins."""
    write_recipe(folder, Recipe("d3llm-block", {"threshold": 0.8}, "bfloat16", {"rule": "test"}))
    for extra, dtype in (((), "bfloat16"), (("--dtype", "float32"), "float32")):
        out = tmp_path / f"{dtype}.json"
        code, _, err = run_cli(monkeypatch, capsys, "eval", "-m", str(folder), "--task", "arith", "--n", "2",
                               "--json", out, *extra)
        assert code in (0, None), err
        assert json.loads(out.read_text())["dtype"] == dtype
