"""Bad inputs to every command and every input file format.

Each case runs `d3llm ARGS` in-process and must end with exit code 2 and exactly one line on
stderr that names the argument or file (`expect`: any of its `|`-separated parts), with no
traceback, no hang, and no file that existed before changed (bytes and mtime). Cases are a
table; the numeric options are crossed with values they must refuse.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import save_toy_model

HUGE = "99999999999999999999"  # > 2**64
NOT_UTF8 = b"\xff\xfe\x00bad \xc3\x28 bytes"
DROP = object()  # a config patch value that removes the key


@dataclass(frozen=True)
class Model:
    """`{tmp}/model`: a copy of a valid toy model folder, then `patch` (keys of config.json,
    DROP removes one), or `raw` (config.json replaced), or `index` (weights moved to
    `{tmp}/outside.safetensors` and a model.safetensors.index.json written)."""

    patch: dict | None = None
    raw: str | bytes | dict | None = None
    index: object = None


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # "{tmp}" is the case's folder
    expect: str  # the error line names one of these ("|"-separated)
    files: tuple[tuple[str, object], ...] = ()  # (path under {tmp}, str | bytes | JSON value)
    model: Model | None = None


CASES: list = []


def case(id_: str, *argv: str, expect: str, files: dict | None = None, model: Model | None = None) -> None:
    CASES.append(pytest.param(Case(tuple(argv), expect, tuple((files or {}).items()), model), id=id_))


def as_yaml(value: object) -> str:
    return yaml.safe_dump(value, sort_keys=False)


# --- numeric options x values they must refuse ------------------------------------------

GEN = ("generate", "--model", "tiny-ar", "hi")
EVAL = ("eval", "--model", "tiny-ar", "--task", "arith", "--n", "1", "--max-new-tokens", "8")
SWEEP = ("sweep", "--model", "tiny-ar", "--task", "arith", "--method", "ar", "--param", "max_new_tokens=8",
         "--out", "{tmp}/sweep", "--n", "1")
TRAJ = ("trajectories", "--teacher", "tiny-teacher", "--task", "arith=2", "--out", "{tmp}/traj")
TRAIN = ("train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/run")
EXPORT = ("export", "tiny-ar", "--out", "{tmp}/export")
SERVE = ("serve", "--model", "tiny-ar")
CHAT = ("chat", "--model", "tiny-ar")
AUP = ("aup", "{tmp}/t.json")
BOARD = ("leaderboard", "{tmp}/r.json", "--out", "{tmp}/board", "--no-plots")
DEMO = ("demo", "--out", "{tmp}/demo", "--task", "arith")

TINY_TRAIN = {
    "family": "llada", "tokenizer_from": "tiny-ar",
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "max_length": 256},
    "tasks": {"arith": 1.0}, "vocab_size": 300, "gen_length": 32, "num_examples": 16, "batch_size": 8,
    "warmup_steps": 0, "eval_every": 0, "threads": 1, "steps": 1, "save_every": 1,
}
GOOD_TRAIN = {"c.yaml": as_yaml(TINY_TRAIN)}
RECORD = {"model": "m", "task": "arith", "method": "vanilla", "n": 10, "seed": 0, "split": "test",
          "accuracy_pct": 50.0, "tokens_per_forward": 1.5, "tokens_per_second": 10.0}
GOOD_TABLE = {"t.json": {"arith": {"vanilla": [[1.0, 50.0]], "d3llm": [[3.0, 48.0]]}}}

NUMERIC = [  # (command, option, files, {value: what the error names})
    (GEN, "--max-new-tokens", None, {"-1": "max_new_tokens", "0": "max_new_tokens", "abc": "--max-new-tokens",
                                      "nan": "--max-new-tokens", HUGE: "max_new_tokens|max-new-tokens"}),
    (EVAL, "--n", None, {"-1": "--n", "0": "--n", "abc": "--n", "nan": "--n"}),
    (EVAL, "--batch-size", None, {"-1": "batch", "0": "batch", "abc": "--batch-size"}),
    (EVAL, "--max-new-tokens", None, {"-1": "max_new_tokens", "0": "max_new_tokens", "abc": "--max-new-tokens",
                                       HUGE: "max_new_tokens|max-new-tokens"}),
    (EVAL, "--seed", None, {"abc": "--seed", "nan": "--seed"}),
    (SWEEP, "--n", None, {"-1": "n", "0": "n", "abc": "--n"}),
    (SWEEP, "--batch-size", None, {"-1": "batch", "0": "batch", "abc": "--batch-size"}),
    (SWEEP, "--seed", None, {"abc": "--seed"}),
    (TRAJ, "--max-new-tokens", None, {"-1": "max_new_tokens|max-new-tokens", "0": "max_new_tokens|max-new-tokens",
                                       "abc": "--max-new-tokens"}),
    (TRAJ, "--block-size", None, {"-1": "block", "0": "block", "abc": "--block-size"}),
    (TRAJ, "--chunk-size", None, {"-1": "chunk", "0": "chunk", "abc": "--chunk-size"}),
    (TRAJ, "--batch-size", None, {"-1": "batch", "0": "batch", "abc": "--batch-size"}),
    (TRAJ, "--seed", None, {"abc": "--seed"}),
    (TRAIN, "--steps", GOOD_TRAIN, {"-1": "steps", "0": "steps", "abc": "--steps"}),
    (TRAIN, "--threads", GOOD_TRAIN, {"-1": "threads", "0": "threads", "abc": "--threads", HUGE: "threads"}),
    (TRAIN, "--stop-at", GOOD_TRAIN, {"-1": "--stop-at", "0": "--stop-at", "abc": "--stop-at", HUGE: "--stop-at"}),
    (EXPORT, "--shards", None, {"-1": "shards", "0": "shards", "abc": "--shards", HUGE: "shards"}),
    (SERVE, "--port", None, {"-1": "--port", "70000": "--port", "abc": "--port", HUGE: "--port"}),
    (SERVE, "--max-batch", None, {"-1": "max-batch|max_batch", "0": "max-batch|max_batch", "abc": "--max-batch"}),
    (SERVE, "--max-wait-ms", None, {"-1": "max-wait-ms|max_wait_ms", "nan": "max-wait-ms|max_wait_ms",
                                     "inf": "max-wait-ms|max_wait_ms", "abc": "--max-wait-ms"}),
    (SERVE, "--max-queue", None, {"-1": "max-queue|max_queue", "0": "max-queue|max_queue"}),
    (SERVE, "--max-tokens-limit", None, {"-1": "max-tokens-limit|max_tokens_limit",
                                          "0": "max-tokens-limit|max_tokens_limit"}),
    (CHAT, "--max-new-tokens", None, {"-1": "max_new_tokens|max-new-tokens", "0": "max_new_tokens|max-new-tokens",
                                       "abc": "--max-new-tokens"}),
    (AUP, "--alpha", GOOD_TABLE, {"-3": "alpha", "nan": "alpha", "inf": "alpha", "-inf": "alpha",
                                  "abc": "--alpha"}),
    (BOARD, "--alpha", {"r.json": RECORD}, {"-3": "alpha", "nan": "alpha", "inf": "alpha", "abc": "--alpha"}),
    (DEMO, "--n", None, {"-1": "--n|`n`", "0": "--n|`n`", "abc": "--n"}),
]
for command, option, files, values in NUMERIC:
    for value, expect in values.items():
        case(f"{command[0]}{option}={value}", *command, option, value, expect=expect, files=files)

# --- decode settings (--set) -------------------------------------------------------------

DLLM_GEN = ("generate", "--model", "tiny-teacher", "--max-new-tokens", "8", "hi")
for setting, expect in {
    "temperature=nan": "temperature", "temperature=inf": "temperature", "temperature=-1": "temperature",
    "temperature=abc": "temperature", "threshold=nan": "threshold", "threshold=abc": "threshold",
    "block_size=0": "block_size", "block_size=abc": "block_size", "max_new_tokens=-5": "max_new_tokens",
    "tokens_per_step=0": "tokens_per_step", "cache=bogus": "cache", "early_stop=maybe": "early_stop",
    "cache_delay=-1": "cache_delay", "refresh_interval=0": "refresh_interval",
    "block_add_threshold=2": "block_add_threshold", "nosuch=1": "nosuch", "threshold": "threshold",
    f"seed={HUGE}": "seed", "seed=-1": "seed",
}.items():
    case(f"generate--set-{setting}", *DLLM_GEN, "--set", setting, expect=expect)
# Sampling with a seed that overflows, and a NaN temperature.
case("generate-sampling-seed-overflow", "generate", "--model", "tiny-teacher", "--set", "temperature=0.5",
     "--set", f"seed={HUGE}", "hi", expect="seed")
case("eval--set-temperature=nan", *EVAL, "--set", "temperature=nan", expect="temperature")
case("sweep--param-bad-value", *SWEEP[:-4], "--param", "threshold=abc", "--out", "{tmp}/sweep", expect="threshold")
case("sweep--param-unknown", *SWEEP[:-4], "--param", "nosuch=1,2", "--out", "{tmp}/sweep", expect="nosuch")
case("sweep--param-no-values", *SWEEP[:-4], "--param", "threshold=", "--out", "{tmp}/sweep", expect="--param")
case("sweep--set-seed-overflow", *SWEEP, "--set", f"seed={HUGE}", expect="seed")
case("chat--set-temperature=nan", *CHAT, "--set", "temperature=nan", expect="temperature")
case("chat--set-unknown", *CHAT, "--set", "nosuch=1", expect="nosuch")

# --- names, choices and plain arguments ---------------------------------------------------

case("generate-empty-prompt", "generate", "--model", "tiny-ar", "   ", expect="prompt")
case("generate-unknown-model", "generate", "--model", "no-such-model", "hi", expect="no-such-model")
case("generate-model-is-a-file", "generate", "--model", "{tmp}/f.txt", "hi", expect="f.txt", files={"f.txt": "x"})
case("generate-unknown-method", *GEN, "--method", "bogus", expect="bogus")
case("generate-ar-method-on-dllm", "generate", "--model", "tiny-teacher", "--method", "ar", "hi", expect="ar")
case("generate-bad-device", *GEN, "--device", "tpu", expect="--device")
case("generate-bad-dtype", *GEN, "--dtype", "float8", expect="--dtype")
case("eval-unknown-task", "eval", "--model", "tiny-ar", "--task", "nosuch", expect="nosuch")
case("eval-bad-split", *EVAL, "--split", "dev", expect="split")
case("eval-code-too-many", "eval", "--model", "tiny-ar", "--task", "code", "--n", "10000000", expect="code|--n")
case("eval--json-is-a-folder", *EVAL, "--json", "{tmp}/out", expect="--json", files={"out/keep.txt": "mine"})
case("eval--json-under-a-file", *EVAL, "--json", "{tmp}/f.txt/r.json", expect="--json", files={"f.txt": "mine"})
case("eval--log-samples-is-a-folder", *EVAL, "--log-samples", "{tmp}/out", expect="--log-samples",
     files={"out/keep.txt": "mine"})
case("sweep--out-is-a-file", *SWEEP[:-3], "{tmp}/taken", "--n", "1", expect="--out", files={"taken": "mine"})
case("sweep-unknown-method", *SWEEP, "--method", "bogus", expect="bogus")
case("sweep-bad-split", *SWEEP, "--split", "dev", expect="split")
case("trajectories-ar-teacher", "trajectories", "--teacher", "tiny-ar", "--task", "arith=2", "--out", "{tmp}/traj",
     expect="tiny-ar|autoregressive")
case("trajectories--out-is-a-file", *TRAJ[:-1], "{tmp}/taken", expect="--out", files={"taken": "mine"})
case("trajectories-bad-split", *TRAJ, "--split", "dev", expect="split")
for spec, expect in {"arith=-1": "arith", "arith=0": "arith", "arith=abc": "arith", "arith=1.5": "arith",
                     "arith": "--task", "nosuch=3": "nosuch", "code=10000000": "code"}.items():
    case(f"trajectories--task-{spec}", "trajectories", "--teacher", "tiny-teacher", "--task", spec,
         "--out", "{tmp}/traj", expect=expect)
case("train-missing-config", "train", "--config", "{tmp}/none.yaml", "--out", "{tmp}/run", expect="none.yaml")
case("train--out-is-a-file", "train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/taken", expect="--out",
     files={**GOOD_TRAIN, "taken": "mine"})
case("export-unknown-layout", *EXPORT, "--layout", "gguf", expect="--layout")
case("export-bad-storage-dtype", *EXPORT, "--storage-dtype", "float8", expect="--storage-dtype")
case("export-old--dtype", *EXPORT, "--dtype", "int8", expect="--storage-dtype")  # renamed: the stored precision
case("export-missing-source", "export", "{tmp}/none", "--out", "{tmp}/export", expect="none")
case("export-llada-layout-of-ar", *EXPORT, "--layout", "llada", expect="layout|LLaDA")
case("export-int8-official-layout", "export", "tiny-teacher", "--out", "{tmp}/export", "--layout", "llada",
     "--storage-dtype", "int8", expect="int8 storage is ours")
case("export-decode-block-size-0", *EXPORT, "--decode-block-size", "0", expect="--decode-block-size")
case("export-decode-block-size-of-ar", *EXPORT, "--decode-block-size", "8", expect="decode_block_size")
case("export--out-is-a-file", "export", "tiny-ar", "--out", "{tmp}/taken", expect="--out", files={"taken": "mine"})
case("serve-bad-log-level", *SERVE, "--log-level", "loud", expect="--log-level")
case("serve-bad-device", *SERVE, "--device", "tpu", expect="--device")
case("serve-unknown-method", *SERVE, "--method", "bogus", "--port", "{port}", expect="bogus")
case("chat-unknown-method", *CHAT, "--method", "bogus", expect="bogus")
case("chat-unknown-model", "chat", "--model", "no-such-model", expect="no-such-model")
case("models-unknown-option", "models", "--bogus", expect="--bogus")
case("models-extra-argument", "models", "extra", expect="extra")
case("unknown-command", "nosuch", expect="nosuch")
case("aup-missing-table", "aup", "{tmp}/none.json", expect="none.json")
case("leaderboard-missing-path", "leaderboard", "{tmp}/none", "--out", "{tmp}/board", expect="none")
case("leaderboard--out-is-a-file", "leaderboard", "{tmp}/r.json", "--out", "{tmp}/taken", "--no-plots",
     expect="--out", files={"r.json": RECORD, "taken": "mine"})
case("leaderboard-empty-folder", "leaderboard", "{tmp}/empty", "--out", "{tmp}/board", expect="empty",
     files={"empty/notes.txt": "no records"})
case("demo--out-is-a-file", "demo", "--out", "{tmp}/taken", "--n", "1", expect="--out", files={"taken": "mine"})
case("demo-unknown-task", *DEMO, "--task", "nosuch", expect="nosuch")

# --- config.json of a model folder --------------------------------------------------------

MODEL_GEN = ("generate", "--model", "{tmp}/model", "hi")
for name, model in {
    "not-utf8": Model(raw=NOT_UTF8), "not-json": Model(raw="{not json"), "a-list": Model(raw=[1, 2]),
    "a-string": Model(raw="text"), "null": Model(raw="null"),
    "hidden-not-divisible-by-heads": Model({"hidden_size": 30}),
    "hidden-size-string": Model({"hidden_size": "abc"}), "heads-string": Model({"num_attention_heads": "4"}),
    "layers-negative": Model({"num_hidden_layers": -1}), "layers-zero": Model({"num_hidden_layers": 0}),
    "vocab-zero": Model({"vocab_size": 0}), "vocab-float": Model({"vocab_size": 1.5}),
    "unknown-family": Model({"d3llm_family": "gpt"}), "family-number": Model({"d3llm_family": 5}),
    "max-length-negative": Model({"max_position_embeddings": -1}),
    "max-length-string": Model({"max_position_embeddings": "long"}),
    "eos-string": Model({"eos_token_id": "x"}), "eos-negative": Model({"eos_token_id": -1}),
    "mask-string": Model({"mask_token_id": "x"}),
    "mask-negative": Model({"mask_token_id": -5}), "mask-huge": Model({"mask_token_id": 10 ** 30}),
    "kv-heads-not-dividing": Model({"num_key_value_heads": 3}), "kv-heads-zero": Model({"num_key_value_heads": 0}),
    "intermediate-zero": Model({"intermediate_size": 0}), "rope-string": Model({"rope_parameters": "x"}),
    "rope-theta-string": Model({"rope_parameters": {"rope_type": "default", "rope_theta": "x"}}),
    "rms-eps-string": Model({"rms_norm_eps": "x"}), "tie-string": Model({"tie_word_embeddings": "yes"}),
    "model-type-number": Model({"model_type": 5}), "model-type-missing": Model({"model_type": DROP}),
    "llada-d-model-string": Model(raw={"model_type": "llada", "d_model": "abc", "n_heads": 4, "n_layers": 2,
                                       "vocab_size": 300, "eos_token_id": 1}),
    "llada-heads-zero": Model(raw={"model_type": "llada", "d_model": 32, "n_heads": 0, "n_layers": 2,
                                   "vocab_size": 300, "eos_token_id": 1}),
    "llada-missing-key": Model(raw={"model_type": "llada", "d_model": 32}),
    "dream-hidden-string": Model(raw={"model_type": "Dream", "hidden_size": "x", "vocab_size": 300,
                                      "num_hidden_layers": 2, "num_attention_heads": 4, "eos_token_id": 1}),
}.items():
    case(f"config.json-{name}", *MODEL_GEN, expect="config.json", model=model)
case("eval-config.json-hidden-not-divisible", "eval", "--model", "{tmp}/model", "--task", "arith", "--n", "1",
     expect="config.json", model=Model({"hidden_size": 30}))
case("sweep-config.json-a-list", "sweep", "--model", "{tmp}/model", "--task", "arith", "--param", "threshold=0.5",
     "--out", "{tmp}/sweep", expect="config.json", model=Model(raw=[1]))
case("export-config.json-unknown-family", "export", "{tmp}/model", "--out", "{tmp}/export", expect="config.json",
     model=Model({"d3llm_family": "gpt"}))
case("trajectories-config.json-string-heads", "trajectories", "--teacher", "{tmp}/model", "--task", "arith=2",
     "--out", "{tmp}/traj", expect="config.json", model=Model({"num_attention_heads": "4"}))
case("serve-config.json-not-utf8", "serve", "--model", "{tmp}/model", "--port", "{port}", expect="config.json",
     model=Model(raw=NOT_UTF8))
case("chat-config.json-unknown-family", "chat", "--model", "{tmp}/model", expect="config.json",
     model=Model({"d3llm_family": "gpt"}))

# --- safetensors index --------------------------------------------------------------------

INDEX = "model.safetensors.index.json"
for name, index in {
    "escapes-to-a-real-file": {"weight_map": {"w": "../outside.safetensors"}},
    "escapes-to-etc": {"weight_map": {"w": "../../../../../../etc/passwd"}},
    "absolute-path": {"weight_map": {"w": "/etc/passwd"}},
    "escapes-through-a-subfolder": {"weight_map": {"w": "sub/../../outside.safetensors"}},
    "weight-map-a-list": {"weight_map": ["model.safetensors"]}, "weight-map-values-numbers": {"weight_map": {"w": 5}},
    "weight-map-missing": {"metadata": {}}, "a-list": [1, 2], "not-json": "{oops", "not-utf8": NOT_UTF8,
}.items():
    case(f"index-{name}", *MODEL_GEN, expect=INDEX, model=Model(index=index))
case("export-index-escapes", "export", "{tmp}/model", "--out", "{tmp}/export", expect=INDEX,
     model=Model(index={"weight_map": {"w": "../outside.safetensors"}}))

# --- train YAML ---------------------------------------------------------------------------

for name, (content, expect) in {
    "not-utf8": (NOT_UTF8, "c.yaml"), "invalid-yaml": ("steps: [1,\n", "c.yaml"),
    "top-level-list": ("- steps: 1\n", "c.yaml"), "top-level-scalar": ("5\n", "c.yaml"),
    "steps-string": ({"steps": "abc"}, "steps"), "steps-float": ({"steps": 1.5}, "steps"),
    "steps-bool": ({"steps": True}, "steps"), "lr-string": ({"lr": "fast"}, "lr"),
    "lr-nan": ("lr: .nan\n", "lr"), "batch-size-list": ({"batch_size": [8]}, "batch_size"),
    "model-number": ({"model": 5}, "model"), "model-hidden-string": ({"model": {"hidden_size": "big"}}, "hidden_size"),
    "model-hidden-not-divisible": ({"model": {"hidden_size": 30, "num_heads": 4}}, "hidden_size"),
    "model-layers-zero": ({"model": {"num_layers": 0}}, "num_layers"),
    "model-max-length-negative": ({"model": {"max_length": -1}}, "max_length"),
    "tasks-list": ({"tasks": ["arith"]}, "tasks"), "tasks-weight-string": ({"tasks": {"arith": "x"}}, "tasks"),
    "tasks-unknown": ({"tasks": {"nosuch": 1.0}}, "nosuch"), "objective-number": ({"objective": 5}, "objective"),
    "objective-t-min-string": ({"objective": {"t_min": "x"}}, "t_min"), "distill-list": ({"distill": [1]}, "distill"),
    "threads-negative": ({"threads": -1}, "threads"), "threads-string": ({"threads": "x"}, "threads"),
    "warmup-negative": ({"warmup_steps": -1}, "warmup_steps"), "eval-every-negative": ({"eval_every": -1}, "eval_every"),
    "eval-n-zero": ({"eval_every": 10, "eval_n": 0}, "eval_n"), "seed-string": ({"seed": "x"}, "seed"),
    "max-grad-norm-negative": ({"max_grad_norm": -1}, "max_grad_norm"), "weight-decay-string": ({"weight_decay": "x"}, "weight_decay"),
    "init-from-number": ({"init_from": 5}, "init_from"), "eval-method-unknown": ({"eval_method": "bogus"}, "eval_method|bogus"),
    "vocab-size-string": ({"vocab_size": "x"}, "vocab_size"), "gen-length-string": ({"gen_length": "x"}, "gen_length"),
    "family-unknown": ({"family": "gpt"}, "family"), "unknown-key": ({"stepz": 1}, "stepz"),
    "examples-unknown": ({"examples": "random"}, "examples"), "examples-list": ({"examples": ["drawn"]}, "examples"),
}.items():
    text = as_yaml({**TINY_TRAIN, **content}) if isinstance(content, dict) else content
    case(f"train-yaml-{name}", *TRAIN, expect=expect, files={"c.yaml": text})

# --- trajectory manifest.json -------------------------------------------------------------

MANIFEST = {
    "format": "d3llm-trajectories", "version": 1, "teacher": "tiny-teacher", "teacher_fingerprint": "0" * 16,
    "tokenizer_fingerprint": "0" * 16, "family": "llada", "work": {"tasks": {"arith": 4}, "split": "train", "seed": 0},
    "num_records": 4, "chunk_size": 4, "decode_config": {"max_new_tokens": 32, "block_size": 32},
}
DISTILL = ("distill", "--teacher", "tiny-teacher", "--trajectories", "{tmp}/traj", "--out", "{tmp}/student")
for name, content in {
    "not-utf8": NOT_UTF8, "not-json": "{oops", "a-list": [MANIFEST], "version-string": {"version": "1"},
    "work-list": {"work": []}, "work-missing": {"work": DROP}, "tasks-list": {"work": {"tasks": ["arith"]}},
    "task-count-string": {"work": {"tasks": {"arith": "x"}, "split": "train", "seed": 0}},
    "decode-config-string": {"decode_config": "x"}, "decode-config-missing": {"decode_config": DROP},
    "max-new-tokens-string": {"decode_config": {"max_new_tokens": "x"}},
    "num-records-string": {"num_records": "x"}, "num-records-negative": {"num_records": -1},
    "chunk-size-zero": {"chunk_size": 0}, "chunk-size-string": {"chunk_size": "x"},
    "family-unknown": {"family": "gpt"}, "teacher-fingerprint-number": {"teacher_fingerprint": 5},
}.items():
    if isinstance(content, dict):
        content = {k: v for k, v in {**MANIFEST, **content}.items() if v is not DROP}
    case(f"manifest-{name}", *DISTILL, expect="manifest.json", files={"traj/manifest.json": content})
case("trajectories-existing-manifest-not-utf8", *TRAJ, expect="manifest.json", files={"traj/manifest.json": NOT_UTF8})
case("trajectories-existing-manifest-a-list", *TRAJ, expect="manifest.json", files={"traj/manifest.json": [1]})
case("distill-teacher-config.json-a-list", "distill", "--teacher", "{tmp}/model", "--trajectories", "{tmp}/traj",
     "--out", "{tmp}/student", expect="config.json", model=Model(raw=[1]),
     files={"traj/manifest.json": MANIFEST})
case("distill-no-manifest", *DISTILL, expect="manifest.json", files={"traj/notes.txt": "x"})
case("distill-missing-trajectories", "distill", "--teacher", "tiny-teacher", "--trajectories", "{tmp}/none",
     "--out", "{tmp}/student", expect="none")
case("distill--out-is-a-file", *DISTILL[:-1], "{tmp}/taken", expect="--out",
     files={"traj/manifest.json": MANIFEST, "taken": "mine"})

# --- distill --train-set and --config -----------------------------------------------------------

for setting, expect in {
    "windows=5": "windows", "windows=abc": "windows", "windows=[0]": "windows", "windows=[16,x]": "windows",
    "steps=abc": "steps", "steps=-5": "steps", "batch_size=0": "batch_size", "lr=abc": "lr",
    "threads=-1": "threads", "masking=bogus": "masking", "keep=bogus": "keep", "lora_rank=-1": "lora_rank",
    "entropy_weight=abc": "entropy_weight", "t_min=2": "t_min", "complementary=maybe": "complementary",
    "progressive_noise=3": "progressive_noise", "nosuch=1": "nosuch", "noequals": "noequals",
}.items():
    case(f"distill--train-set-{setting}", *DISTILL, "--train-set", setting, expect=expect,
         files={"traj/manifest.json": MANIFEST})
case("distill-old--set", *DISTILL, "--set", "steps=5", expect="--train-set",  # renamed: training settings
     files={"traj/manifest.json": MANIFEST})
for name, (content, expect) in {
    "not-utf8": (NOT_UTF8, "r.yaml"), "a-list": ("- 1\n", "r.yaml"), "invalid-yaml": ("a: [\n", "r.yaml"),
    "steps-string": ("steps: x\n", "steps"), "distill-number": ("distill: 5\n", "distill"),
    "missing": (None, "r.yaml"),
}.items():
    files = {"traj/manifest.json": MANIFEST, **({} if content is None else {"r.yaml": content})}
    case(f"distill--config-{name}", *DISTILL, "--config", "{tmp}/r.yaml", expect=expect, files=files)

# --- result files (leaderboard) -----------------------------------------------------------

for name, content in {
    "not-utf8": NOT_UTF8, "not-json": "{oops", "a-list": [RECORD], "missing-keys": {"model": "m"},
    "model-number": {"model": 5}, "task-list": {"task": ["arith"]}, "method-null": {"method": None},
    "split-number": {"split": 3}, "n-string": {"n": "10"}, "n-float": {"n": 1.5}, "n-negative": {"n": -1},
    "seed-string": {"seed": "0"}, "accuracy-string": {"accuracy_pct": "50"}, "accuracy-150": {"accuracy_pct": 150},
    "tpf-string": {"tokens_per_forward": "x"}, "tpf-zero": {"tokens_per_forward": 0},
    "tokens-per-second-string": {"tokens_per_second": "fast"}, "tokens-per-second-negative": {"tokens_per_second": -1},
    "tokens-per-second-nan": json.dumps(RECORD).replace('"tokens_per_second": 10.0', '"tokens_per_second": NaN'),
    "accuracy-nan": json.dumps(RECORD).replace('"accuracy_pct": 50.0', '"accuracy_pct": NaN'),
    "sweep-point-string": {"sweep_point": "x"},
}.items():
    if isinstance(content, dict):
        content = {**RECORD, **content} if name != "missing-keys" else content
    case(f"result-{name}", *BOARD, expect="r.json", files={"r.json": content})
case("result-in-folder-bad-types", "leaderboard", "{tmp}/results", "--out", "{tmp}/board", "--no-plots",
     expect="bad.json", files={"results/bad.json": {**RECORD, "n": "ten"}})
case("result-in-folder-not-utf8", "leaderboard", "{tmp}/results", "--out", "{tmp}/board", "--no-plots",
     expect="bad.json", files={"results/good.json": RECORD, "results/bad.json": NOT_UTF8})

# --- AUP tables ---------------------------------------------------------------------------

for name, content in {
    "not-utf8": NOT_UTF8, "invalid": "{oops: [", "a-list": [[1, 50]], "a-scalar": "5", "empty": {},
    "points-a-number": {"arith": {"m": 5}}, "points-a-string": {"arith": {"m": "ab"}},
    "point-a-number": {"arith": {"m": [5]}}, "point-string": {"arith": {"m": [[1, "x"]]}},
    "point-one-value": {"arith": {"m": [[1]]}}, "point-three-values": {"arith": {"m": [[1, 2, 3]]}},
    "accuracy-150": {"arith": {"m": [[1, 150]]}}, "tpf-zero": {"arith": {"m": [[0, 50]]}},
    "tpf-nan": "arith:\n  m: [[.nan, 50]]\n", "points-empty": {"arith": {"m": []}}, "methods-null": {"arith": None},
    "all-zero": {"arith": {"m": [[1, 0]]}}, "points-a-mapping": {"arith": {"m": {"a": 1}}},
}.items():
    case(f"aup-table-{name}", "aup", "{tmp}/t.json", expect="t.json|arith", files={"t.json": content})
case("aup--json-alpha-nan", "aup", "{tmp}/t.json", "--json", "--alpha", "nan", expect="alpha", files=GOOD_TABLE)

# --- GSM8K JSONL --------------------------------------------------------------------------

GSM = ("eval", "--model", "tiny-ar", "--task", "gsm8k:{tmp}/g.jsonl", "--n", "1")
GOOD_LINE = json.dumps({"question": "Tom has 3 apples. How many?", "answer": "3\n#### 3"}) + "\n"
for name, content in {
    "not-utf8": GOOD_LINE.encode() + NOT_UTF8, "invalid-json": GOOD_LINE + "{oops\n", "a-list-line": "[1, 2]\n",
    "missing-answer": json.dumps({"question": "q"}) + "\n", "no-final-number": json.dumps({"question": "q", "answer": "3"}) + "\n",
    "question-a-number": json.dumps({"question": 5, "answer": "#### 5"}) + "\n", "empty": "",
    "answer-a-list": json.dumps({"question": "q", "answer": ["#### 5"]}) + "\n",
}.items():
    case(f"gsm8k-{name}", *GSM, expect="g.jsonl", files={"g.jsonl": content})
case("gsm8k-missing-file", *GSM, expect="g.jsonl")
case("gsm8k-a-folder", "eval", "--model", "tiny-ar", "--task", "gsm8k:{tmp}/gdir", expect="gdir",
     files={"gdir/a.txt": "x"})


# --- running ------------------------------------------------------------------------------


class CaseTimeout(BaseException):
    """Raised in the command after LIMIT_S seconds: a hang (not an `Exception`, so no
    `except Exception` in the code under test turns it into a user error)."""


LIMIT_S = 30


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_toy_model(tmp_path_factory.mktemp("bad-inputs") / "toy", tiny_tokenizer)


def _write(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))


def _build_model(spec: Model, tmp: Path, toy: Path) -> None:
    folder = tmp / "model"
    shutil.copytree(toy, folder)
    if spec.patch is not None:
        config = json.loads((folder / "config.json").read_text())
        config.update(spec.patch)
        _write(folder / "config.json", {k: v for k, v in config.items() if v is not DROP})
    if spec.raw is not None:
        _write(folder / "config.json", spec.raw)
    if spec.index is not None:
        (folder / "model.safetensors").rename(tmp / "outside.safetensors")
        (folder / "sub").mkdir()
        _write(folder / INDEX, spec.index)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(monkeypatch, capsys, argv: list[str]) -> tuple[object, str, str]:
    """`d3llm ARGV` in-process: (exit code or what went wrong, stdout, stderr)."""
    from d3llm.cli import main

    def started(*_args, **_kwargs):
        raise CaseTimeout("the server started")

    def hang(*_args):
        raise CaseTimeout(f"no answer after {LIMIT_S} s")

    monkeypatch.setattr(sys, "argv", ["d3llm", *argv])
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setattr("d3llm.serve.run_server", started)
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(LIMIT_S)
    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:  # in the real command: a traceback (or a hang)
        code = f"Traceback: {type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_one_line_and_changes_nothing(bad: Case, tmp_path, toy_folder, monkeypatch, capsys):
    for name, content in bad.files:
        _write(tmp_path / name, content)
    if bad.model is not None:
        _build_model(bad.model, tmp_path, toy_folder)
    before = snapshot(tmp_path)
    port = free_port() if "{port}" in bad.argv else 0
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{port}", str(port)) for a in bad.argv]
    code, out, err = run(monkeypatch, capsys, argv)
    assert "Traceback" not in f"{code}{out}{err}", (code, err)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert any(part in lines[0] for part in bad.expect.split("|")), (bad.expect, err)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed before changed"
    assert set(before) <= set(after), "a file that existed before was removed"


def test_the_table_covers_every_command_and_input_format():
    ids = [p.id for p in CASES]
    assert len(ids) >= 150 and len(set(ids)) == len(ids)
    commands = {p.values[0].argv[0] for p in CASES}
    assert {"generate", "eval", "sweep", "aup", "leaderboard", "train", "distill", "trajectories", "export",
            "models", "serve", "chat"} <= commands
    for prefix in ("config.json-", "index-", "train-yaml-", "manifest-", "result-", "aup-table-", "gsm8k-"):
        assert any(i.startswith(prefix) for i in ids), prefix


def test_a_real_process_prints_the_one_line_too(tmp_path, toy_folder):
    """In-process runs do not see what libraries log to the real stderr: transformers warns about
    the token ids the config check then refuses; the command must still print one line."""
    _build_model(Model({"mask_token_id": 10 ** 6}), tmp_path, toy_folder)
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "d3llm.cli", "generate", "--model", str(tmp_path / "model"), "hi"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "config.json" in done.stderr and "mask" in done.stderr, done.stderr
    assert snapshot(tmp_path) == before
