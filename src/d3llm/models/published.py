"""The published checkpoints d3llm loads by hub id, with the decode settings their papers used.

    published_models()          # every entry, in table order
    published("d3LLM/d3LLM_LLaDA@main")   # the entry of a name (revision ignored), or None

`d3llm models --published` prints this table. A model loaded by one of these ids (or from its
folder in a hub cache) decodes with the entry's `method` and `settings` unless the user names a
method; `--set` overrides any setting. Read without torch, like `catalog.py`.

Why each default (the authors' evaluation scripts: hao-ai-lab/d3LLM `eval_scripts/*.sh`, and
docs/checkpoint-layouts.md for the layouts):
- d3LLM students decode with their own multi-block entropy decoder (`d3llm`): threshold 0.5 for
  LLaDA and Dream-Coder, 0.4 for Dream, blocks of 32, 256 tokens (512 for the coder).
- The base models (LLaDA-8B-Instruct, Dream-v0-Instruct-7B) are not distilled: a threshold
  decoder commits tokens they are not yet sure of and loses accuracy, and the design rule is that
  a model's default reproduces its authors' decoder. So `vanilla`, one token per forward, as
  the papers' baseline rows (LLaDA: blocks of 32 by confidence; Dream: the whole canvas as one
  block, lowest entropy first). `--method fast-dllm` is the training-free speed-up to try.
- dParallel students decode with entropy thresholds (`dparallel`: 0.5 LLaDA, 0.45 Dream).
- Fast-dLLM v2 is a block-diffusion model: `fast-dllm-v2` (confidence 0.9 in its blocks of 32).
Differences we keep: Dream's baseline samples at temperature 0.1 with top-p 0.9, and d3llm
has no top-p, so it decodes greedily; Fast-dLLM v2 commits sub-blocks of 8 in order, d3llm does not
(docs/checkpoint-layouts.md section 5.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from d3llm.models.hub import cache_dir, parse_hub_id


@dataclass(frozen=True)
class PublishedModel:
    repo_id: str  # ORG/NAME on the Hugging Face Hub
    family: str  # llada | dream | block (d3llm.models.lm.FAMILIES)
    parameters: int  # from the layout's tensor shapes (docs/checkpoint-layouts.md)
    method: str  # the preset it decodes with unless --method is given
    settings: dict = field(default_factory=dict)  # DecodeConfig overrides of that preset (the paper's)
    source: str = ""  # where the settings come from
    note: str = ""  # what the checkpoint is

    def settings_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or "-"


LLADA_8B = 8_015_581_184  # docs/checkpoint-layouts.md 1.4
QWEN25_7B = 7_615_616_512  # Dream-7B / Qwen2.5-7B shapes, 2.3

_D3LLM_SCRIPTS = "hao-ai-lab/d3LLM eval_scripts"
PUBLISHED: tuple[PublishedModel, ...] = (
    PublishedModel("d3LLM/d3LLM_LLaDA", "llada", LLADA_8B, "d3llm",
                   dict(threshold=0.5, block_size=32, max_new_tokens=256), f"{_D3LLM_SCRIPTS}/llada_gsm8k_cot.sh",
                   "d3LLM student of LLaDA-8B-Instruct"),
    PublishedModel("d3LLM/d3LLM_Dream", "dream", QWEN25_7B, "d3llm",
                   dict(threshold=0.4, block_size=32, max_new_tokens=256), f"{_D3LLM_SCRIPTS}/dream_gsm8k_cot.sh",
                   "d3LLM student of Dream-v0-Instruct-7B"),
    PublishedModel("d3LLM/d3LLM_Dream_Coder", "dream", QWEN25_7B, "d3llm",
                   dict(threshold=0.5, block_size=32, max_new_tokens=512), f"{_D3LLM_SCRIPTS}/dream-coder.sh",
                   "d3LLM student of Dream-Coder-v0-Instruct-7B"),
    PublishedModel("GSAI-ML/LLaDA-8B-Instruct", "llada", LLADA_8B, "vanilla",
                   dict(block_size=32, max_new_tokens=256), f"{_D3LLM_SCRIPTS}/llada_gsm8k_cot.sh (vanilla row)",
                   "LLaDA teacher (base)"),
    PublishedModel("Dream-org/Dream-v0-Instruct-7B", "dream", QWEN25_7B, "vanilla",
                   dict(rank_by="entropy", block_size=256, max_new_tokens=256),
                   f"{_D3LLM_SCRIPTS}/dream_gsm8k_cot.sh (vanilla row, alg entropy)", "Dream teacher (base)"),
    PublishedModel("Zigeng/dParallel-LLaDA-8B-instruct", "llada", LLADA_8B, "dparallel",
                   dict(threshold=0.5, block_size=32, max_new_tokens=256),
                   f"{_D3LLM_SCRIPTS}/llada_gsm8k_cot.sh (dParallel rows)", "dParallel student of LLaDA-8B-Instruct"),
    PublishedModel("Zigeng/dParallel_Dream_7B_Instruct", "dream", QWEN25_7B, "dparallel",
                   dict(threshold=0.45, max_new_tokens=256), f"{_D3LLM_SCRIPTS}/dream_gsm8k_cot.sh (dParallel rows)",
                   "dParallel student of Dream-v0-Instruct-7B"),
    PublishedModel("Efficient-Large-Model/Fast_dLLM_v2_7B", "block", QWEN25_7B, "fast-dllm-v2",
                   dict(threshold=0.9, max_new_tokens=256), "NVlabs/Fast-dLLM v2/eval.py (threshold 0.9, blocks 32)",
                   "Fast-dLLM v2 block diffusion, from Qwen2.5-7B-Instruct"),
)


def published_models() -> tuple[PublishedModel, ...]:
    return PUBLISHED


def published(name: str | None) -> PublishedModel | None:
    """The entry of a hub id (any revision; ids compare case-insensitively, as the Hub's), or None."""
    hub_id = parse_hub_id(name) if name else None
    if hub_id is None:
        return None
    return next((m for m in PUBLISHED if m.repo_id.lower() == hub_id.repo_id.lower()), None)


def is_cached(repo_id: str) -> bool:
    """Whether the hub cache (HF_HOME / HF_HUB_CACHE) holds a snapshot of `repo_id`."""
    snapshots = cache_dir() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def published_table() -> str:
    """`d3llm models --published`: one aligned row per entry."""
    header = ("hub id", "family", "params", "default method", "settings", "cached", "what")
    rows = [header, *[(m.repo_id, m.family, f"{m.parameters / 1e9:.2f}B", m.method, m.settings_text(),
                       "yes" if is_cached(m.repo_id) else "no", m.note) for m in PUBLISHED]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip() for row in rows]
    return "\n".join(lines + ["Load any of them with --model HUB_ID (downloaded into the Hugging Face cache); "
                              "--method and --set override the settings."])
