"""Training configuration: a YAML file mapped onto a frozen, validated dataclass.

    family: llada              # llada | dream | ar
    init_from: null            # folder to start from (dream: the AR model it adapts)
    tokenizer_from: null       # folder whose tokenizer to use; null = train a new one
    model: {hidden_size: 192, num_layers: 6, num_heads: 6, intermediate_size: 512, max_length: 512}
    tasks: {arith: 0.5, arith-long: 0.2, code: 0.3}
    ...

See `configs/*.yaml` for the bundled models' recipes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from d3llm.errors import D3llmError
from d3llm.models.lm import FAMILIES
from d3llm.train.distill import DistillSettings
from d3llm.train.objectives import DiffusionObjective


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 6
    num_kv_heads: int | None = None
    intermediate_size: int | None = 512
    max_length: int = 512  # longest canvas; arith-long prompts reach ~380 tokens


@dataclass(frozen=True)
class TrainConfig:
    family: str = "llada"
    init_from: str | None = None
    tokenizer_from: str | None = None
    vocab_size: int = 512  # for a new tokenizer
    model: ModelShape = field(default_factory=ModelShape)
    tasks: dict[str, float] = field(default_factory=lambda: {"arith": 0.5, "arith-long": 0.2, "code": 0.3})
    gen_length: int = 64  # diffusion families: response canvas, padded with EOS (LLaDA SFT)
    num_examples: int = 40_000  # training examples drawn from the tasks' train splits
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
        if not self.tasks or min(self.tasks.values()) < 0:
            raise D3llmError(f"`tasks` must map task names to non-negative weights, got {self.tasks}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise D3llmError(f"training config {path} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise D3llmError(f"{path} is not valid YAML ({exc})") from None
        return cls.from_dict({**raw, **overrides}, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "TrainConfig":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise D3llmError(f"{source}: unknown key(s) {unknown}; valid: {', '.join(sorted(valid))}")
        raw = dict(raw)
        if "model" in raw:
            shape_keys = {f.name for f in dataclasses.fields(ModelShape)}
            bad = sorted(set(raw["model"]) - shape_keys)
            if bad:
                raise D3llmError(f"{source}: unknown model key(s) {bad}; valid: {', '.join(sorted(shape_keys))}")
            raw["model"] = ModelShape(**raw["model"])
        if "objective" in raw:
            keys = {f.name for f in dataclasses.fields(DiffusionObjective)}
            bad = sorted(set(raw["objective"] or {}) - keys)
            if bad:
                raise D3llmError(f"{source}: unknown objective key(s) {bad}; valid: {', '.join(sorted(keys))}")
            raw["objective"] = DiffusionObjective(**(raw["objective"] or {}))
        if raw.get("distill") is not None:
            keys = {f.name for f in dataclasses.fields(DistillSettings)}
            bad = sorted(set(raw["distill"]) - keys)
            if bad:
                raise D3llmError(f"{source}: unknown distill key(s) {bad}; valid: {', '.join(sorted(keys))}")
            raw["distill"] = DistillSettings(**raw["distill"])
        return cls(**raw)

    def to_dict(self) -> dict:
        """Plain JSON/YAML types (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))
