"""Training configuration: a YAML file mapped onto a frozen, validated dataclass.

    family: llada              # llada | dream | block | ar
    block_size: null           # block: tokens per block (null: init_from's, a block model)
    init_from: null            # folder to start from (dream: the AR model it adapts)
    tokenizer_from: null       # folder whose tokenizer to use; null = train a new one
    model: {hidden_size: 192, num_layers: 6, num_heads: 6, intermediate_size: 512, max_length: 512}
    tasks: {arith: 0.5, arith-long: 0.2, code: 0.3}
    ...

See `configs/*.yaml` for the bundled models' recipes. The `distill:` section is
`DistillSettings` (defined here, beside the config that holds it; `train.distill` uses it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from d3llm.decode.config import METHODS
from d3llm.errors import D3llmError
from d3llm.files import load_yaml as load_bounded_yaml, read_text
from d3llm.models.lm import FAMILIES
from d3llm.tasks import get_task
from d3llm.train.objectives import DiffusionObjective


MASKINGS = ("trajectory", "random")


@dataclass(frozen=True)
class DistillSettings:
    """The `distill:` section of a training config. Each ablation is one setting."""

    trajectories: str = ""  # folder made by `d3llm trajectories`
    keep: str = "correct"  # train on `correct` teacher rollouts only, or `all`
    masking: str = "trajectory"  # `random`: the dParallel-style baseline
    windows: tuple[int, ...] = (16, 16, 24, 24, 32, 32)  # window-size schedule over training
    progressive_window: bool = True  # False: the last window size throughout
    t_min: float = 0.0
    t_max: float = 0.8
    progressive_noise: bool = True  # False: t ~ U(t_min, t_max) throughout
    complementary: bool = True  # the inverted-mask second branch
    entropy_weight: float = 2.0  # certainty forcing (authors: 2 LLaDA, 1 Dream); 0 turns it off
    entropy_temperature: float = 0.5
    entropy_on_complementary: bool = False  # Dream's recipe also forces certainty there
    lora_rank: int | None = None  # LoRA through peft (alpha = rank) instead of full fine-tuning
    # Weight of the teacher's own objective (the config's `objective`, on fresh examples of its
    # `tasks`) added to the distillation loss: rehearsal of what the teacher was trained on, so a
    # few thousand trajectory windows do not pull the student away from it. 0 turns it off.
    replay: float = 0.0
    # Block models only: draw windows over the blocks up to the one holding the response's first
    # EOS, the blocks an early-stopping decoder decodes (the rest of the canvas is EOS padding).
    skip_eos_blocks: bool = False

    def __post_init__(self) -> None:
        if self.keep not in ("all", "correct"):
            raise D3llmError(f"`distill.keep` must be 'all' or 'correct', got {self.keep!r}")
        if self.masking not in MASKINGS:
            raise D3llmError(f"`distill.masking` must be one of {', '.join(MASKINGS)}, got {self.masking!r}")
        if not self.windows or min(self.windows) <= 0:
            raise D3llmError(f"`distill.windows` must be a non-empty list of positive sizes, got {self.windows}")
        if not 0 <= self.t_min <= self.t_max <= 1:
            raise D3llmError(f"need 0 <= `distill.t_min` <= `distill.t_max` <= 1, got {self.t_min}, {self.t_max}")
        if self.entropy_weight < 0 or self.entropy_temperature <= 0:
            raise D3llmError("`distill.entropy_weight` must be >= 0 and `distill.entropy_temperature` > 0")
        if not 0 <= self.replay <= 100:
            raise D3llmError(f"`distill.replay` must be in [0, 100], got {self.replay}")
        if self.lora_rank is not None and self.lora_rank <= 0:
            raise D3llmError(f"`distill.lora_rank` must be positive or null, got {self.lora_rank}")
        object.__setattr__(self, "windows", tuple(int(k) for k in self.windows))


MAX_SHAPE = {"hidden_size": 1 << 14, "num_layers": 1024, "num_heads": 1024, "num_kv_heads": 1024,
             "intermediate_size": 1 << 16, "max_length": 1 << 20}
# Every integer setting: far above any sensible value, so 99999999999999999999 is refused by name
# before it reaches torch (overflow) or a loop (a hang).
MAX_INT = 2**32


@dataclass(frozen=True)
class ModelShape:
    """The network's shape for a model trained from scratch (each bound of MAX_SHAPE is above
    LLaDA-8B's, and keeps a typo from asking for terabytes)."""

    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 6
    num_kv_heads: int | None = None
    intermediate_size: int | None = 512
    max_length: int = 512  # longest canvas; arith-long prompts reach ~380 tokens

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise D3llmError(f"`model.{name}` must be >= 1, got {value}")
            if value is not None and value > MAX_SHAPE[name]:  # checked before anything is allocated
                raise D3llmError(f"`model.{name}` must be at most {MAX_SHAPE[name]}, got {value}")
        if self.hidden_size % self.num_heads:
            raise D3llmError(f"`model.hidden_size` ({self.hidden_size}) must be divisible by `model.num_heads` "
                             f"({self.num_heads})")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise D3llmError(f"`model.num_heads` ({self.num_heads}) must be divisible by `model.num_kv_heads` "
                             f"({self.num_kv_heads})")


@dataclass(frozen=True)
class TrainConfig:
    family: str = "llada"
    block_size: int | None = None  # `block` family: tokens per block; null = `init_from`'s (docs/block-diffusion.md)
    init_from: str | None = None
    tokenizer_from: str | None = None
    vocab_size: int = 512  # for a new tokenizer
    model: ModelShape = field(default_factory=ModelShape)
    tasks: dict[str, float] = field(default_factory=lambda: {"arith": 0.5, "arith-long": 0.2, "code": 0.3})
    gen_length: int = 64  # diffusion families: response canvas, padded with EOS (LLaDA SFT)
    num_examples: int = 40_000  # training examples drawn from the tasks' train splits
    # distinct: each example a different problem (the default). drawn: as the
    # task's generator draws them, repeats allowed, so a kind of problem with few variants keeps
    # its share (with distinct, `code`'s 15 kinds fall to 0.1-25% of the rows; docs/teacher-training.md).
    examples: str = "distinct"
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 100  # checkpoint interval in steps (a crash loses at most this many)
    eval_every: int = 250  # validation accuracy interval in steps (0 = off)
    eval_n: int = 32  # validation problems per task at each evaluation
    threads: int | None = None  # torch threads (None = torch's default)
    eval_method: str | None = None  # validation decode preset (None: vanilla, or ar for AR models)
    distill: DistillSettings | None = None  # set: distil `init_from` (the teacher) from trajectories
    objective: DiffusionObjective = field(default_factory=DiffusionObjective)  # diffusion families
    # --- at scale (docs/distillation.md, "At scale"); the defaults are the CPU's exact float32 ---
    precision: str = "float32"  # bfloat16: weights loaded in bf16 and the Trainer's bf16 autocast (the authors')
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: memory for time
    gradient_accumulation_steps: int = 1  # batches summed per optimizer step (the authors': 4)
    deepspeed: str | None = None  # a DeepSpeed JSON (configs/deepspeed-zero{2,3}.json); needs the deepspeed package

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise D3llmError(f"`family` must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        for name in ("steps", "batch_size", "num_examples", "gen_length", "save_every", "vocab_size"):
            if getattr(self, name) <= 0:
                raise D3llmError(f"`{name}` must be positive, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise D3llmError(f"`lr` must be in (0, 1), got {self.lr}")
        if self.distill is not None and (not self.init_from or not self.distill.trajectories):
            raise D3llmError("distillation needs the teacher (`init_from`) and `distill.trajectories`")
        if self.distill is not None and self.family == "ar":
            raise D3llmError("distillation trains a diffusion student; `family` cannot be ar")
        if self.distill is not None and self.distill.skip_eos_blocks and self.family != "block":
            raise D3llmError(f"`distill.skip_eos_blocks` applies to family block (blocks after the window are "
                             f"invisible only under its block-causal mask), not {self.family}")
        if self.block_size is not None and (self.family != "block" or self.block_size < 1):
            raise D3llmError(f"`block_size` must be a positive integer for family block (null: the block size of "
                             f"`init_from`) and null otherwise, got {self.block_size!r} with family {self.family}")
        if self.family == "block" and (not self.distill or self.distill.replay) and (
                self.objective.weighting != "token_mean" or self.objective.prefix_rows):
            raise D3llmError("family block trains with complementary masks, each token predicted once: set "
                             "`objective.weighting: token_mean` and leave `objective.prefix_rows` at 0")
        if self.examples not in ("distinct", "drawn"):
            raise D3llmError(f"`examples` must be distinct or drawn, got {self.examples!r}")
        if not self.tasks or min(self.tasks.values()) < 0:
            raise D3llmError(f"`tasks` must map task names to non-negative weights, got {self.tasks}")
        for name in self.tasks:
            get_task(name)  # an unknown task fails now, not after the tokenizer and network are built
        for name, low in (("warmup_steps", 0), ("eval_every", 0), ("eval_n", 1), ("seed", 0)):
            if getattr(self, name) < low:
                raise D3llmError(f"`{name}` must be >= {low}, got {getattr(self, name)}")
        if self.seed >= 2**32:
            raise D3llmError(f"`seed` must be below 2**32 (numpy's limit), got {self.seed}")
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise D3llmError(f"`threads` (torch threads) must be in 1..4096 or null, got {self.threads}")
        if self.weight_decay < 0 or not self.max_grad_norm > 0:
            raise D3llmError(f"`weight_decay` must be >= 0 and `max_grad_norm` > 0, got {self.weight_decay} "
                             f"and {self.max_grad_norm}")
        if self.precision not in PRECISIONS:
            raise D3llmError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.gradient_accumulation_steps < 1:
            raise D3llmError(f"`gradient_accumulation_steps` must be >= 1, got {self.gradient_accumulation_steps}")
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            raise D3llmError(f"`deepspeed` {self.deepspeed}: no such file (a DeepSpeed JSON, e.g. "
                             "configs/deepspeed-zero2.json)")
        if self.deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
            raise D3llmError("`deepspeed` needs the deepspeed package (pip install deepspeed, on a GPU machine); "
                             "without it, leave `deepspeed` null: torchrun / accelerate run plain data parallelism")
        if self.eval_method is not None and self.eval_method not in METHODS:
            raise D3llmError(f"`eval_method` must be one of {', '.join(METHODS)} or null, got {self.eval_method!r}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise D3llmError(f"training config {path} not found")
        return cls.from_dict({**read_yaml_mapping(path, "training config"), **overrides}, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "TrainConfig":
        if not isinstance(raw, dict):
            raise D3llmError(f"{source} must be a mapping of settings (key: value), got {type(raw).__name__}")
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise D3llmError(f"{source}: unknown key(s) {unknown}; valid: {', '.join(sorted(valid))}")
        raw = dict(raw)
        if "objective" in raw and raw["objective"] is None:
            raw["objective"] = {}
        check_types(cls, raw, source)  # a section that is not a mapping fails here
        for key, section in SECTIONS.items():
            if raw.get(key) is None:
                continue
            keys = {f.name for f in dataclasses.fields(section)}
            bad = sorted(set(raw[key]) - keys)
            if bad:
                raise D3llmError(f"{source}: unknown {key} key(s) {bad}; valid: {', '.join(sorted(keys))}")
            check_types(section, raw[key], source, prefix=f"{key}.")
            raw[key] = section(**raw[key])
        return cls(**raw)

    def to_dict(self) -> dict:
        """Plain JSON/YAML types (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


PRECISIONS = ("float32", "bfloat16")

# The nested sections of a recipe: YAML mappings that become these dataclasses.
SECTIONS = {"model": ModelShape, "objective": DiffusionObjective, "distill": DistillSettings}


def load_yaml(text: str):
    """`yaml.safe_load` with YAML 1.2 floats (`lr: 5e-5` is 5e-05, not the string '5e-5') and
    aliases bounded (`d3llm.files.load_yaml`)."""
    return load_bounded_yaml(text)


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file that holds a mapping ({} when empty); every problem is a `D3llmError` naming the file."""
    text = read_text(Path(path), what, max_bytes=1 << 20)  # a regular file (a FIFO would block), UTF-8
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise D3llmError(f"{what} {path} is not valid YAML ({' '.join(str(exc).split())})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise D3llmError(f"{what} {path} must be a mapping (key: value lines), not a {type(raw).__name__}")
    return raw


def _type_ok(value: object, kind: str) -> bool:
    if value is None:
        return "None" in kind
    kind = kind.replace("| None", "").strip()
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str" or kind.startswith("Literal"):
        return isinstance(value, str)
    if kind.startswith("tuple[int"):
        return isinstance(value, (list, tuple)) and all(_type_ok(v, "int") for v in value)
    if kind.startswith("dict[str, float]"):
        return isinstance(value, dict) and all(isinstance(k, str) and _type_ok(v, "float") for k, v in value.items())
    return isinstance(value, dict)  # a nested section (model, objective, distill)


_KINDS = {"bool": "true or false", "int": f"an integer of at most {MAX_INT}", "float": "a finite number", "str": "a string",
          "tuple[int, ...]": "a list of integers", "dict[str, float]": "a mapping of task names to weights"}


def check_types(cls, raw: dict, source: str, prefix: str = "") -> None:
    """Each value in `raw` has the type its `cls` field declares (YAML and `--set` can give any):
    a string where a number goes is an error naming the key, not a crash deep inside training."""
    for f in dataclasses.fields(cls):
        if f.name in raw and not _type_ok(raw[f.name], str(f.type)):
            kind = str(f.type).replace("| None", "").strip()
            wanted = _KINDS.get(kind, "one of " + kind[8:-1] if kind.startswith("Literal[") else "a mapping")
            null = " or null" if "None" in str(f.type) else ""
            raise D3llmError(f"{source}: `{prefix}{f.name}` must be {wanted}{null}, got {raw[f.name]!r}")
