"""Selection strategies: the rule that says which masked positions an iteration commits.

A strategy is a small frozen settings object, registered by name (`STRATEGIES`, `register`):

| name            | class        | commits                                                     |
|-----------------|--------------|-------------------------------------------------------------|
| `topk`          | `TopK`       | the `tokens_per_step` best positions of the current block   |
| `confidence`    | `Confidence` | every candidate whose proposal has p >= `threshold`         |
| `entropy`       | `Entropy`    | every candidate whose distribution has H <= `threshold` nats|
| `next-token`    | `NextToken`  | the next column (autoregressive models, `ar`)               |
| `prompt-lookup` | `PromptLookup` | as `next-token`, drafts verified in one forward (`ar-spec`) |
| `self-speculative` | `SelfSpeculative` | block models: its drafts the causal argmax agrees with (`d3llm-exact`) |

The threshold strategies share `ThresholdStrategy`'s settings (forced progress, sub-blocks,
strict comparison) and declare their own `goodness` and `passes`; `select.select` applies them
to a batch of scores. This module needs no torch: the rules use tensor operators only, so the
settings can be read and validated where torch is not installed.

Adding a strategy: one class here (or anywhere, with `@register`), one preset line in
config.py (docs/design.md, "Adding a decoding policy").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from d3llm.decode.parts import Part, Registry, boolean, one_of, positive_int
from d3llm.errors import DecodeSettingError

RankBy = Literal["confidence", "entropy", "position"]
Forcing = Literal["block", "block+global"]

STRATEGIES = Registry()  # name -> Strategy class
register = STRATEGIES.register  # class decorator: selectable by its `name` (`--set strategy=NAME`)


@dataclass(frozen=True)
class Strategy(Part):
    """A selection rule and its settings (the dataclass fields; names unique across strategies,
    cache policies and `DecodeConfig`, since users give them flat: `--set threshold=0.4`)."""

    name: ClassVar[str]
    autoregressive: ClassVar[bool] = False  # decodes autoregressive models, next token first
    # the config's own settings it reads, when it decodes by its own algorithm (None: all, the diffusion loop)
    config_settings: ClassVar[tuple[str, ...] | None] = None
    greedy_only: ClassVar[bool] = False  # verifies drafts against the argmax: temperature 0 only

    def commit_window(self) -> int | None:
        """Columns of the current block a strategy commits in, its first ones with masks (None: anywhere)."""
        return None

    def scores_read(self) -> tuple[str, ...]:
        """The fields of `select.Scores` beyond the tokens that its rules read (`score` computes
        only these)."""
        return ("confidence", "entropy")


@register
@dataclass(frozen=True)
class TopK(Strategy):
    """In the current block, the `tokens_per_step` positions with the most probable proposals
    (LLaDA's vanilla rule), the lowest entropy (`rank_by="entropy"`, Dream's) or the leftmost
    (`rank_by="position"`: left to right inside the block)."""

    name: ClassVar[str] = "topk"
    tokens_per_step: int = 1
    rank_by: RankBy = "confidence"

    def __post_init__(self) -> None:
        positive_int("tokens_per_step", self.tokens_per_step)
        one_of("rank_by", self.rank_by, ("confidence", "entropy", "position"))

    def scores_read(self) -> tuple[str, ...]:
        return () if self.rank_by == "position" else (self.rank_by,)

    def goodness(self, scores):
        """(B, n) higher is better (`select.Scores`)."""
        if self.rank_by == "position":
            return scores.leftmost()
        return scores.confidence if self.rank_by == "confidence" else -scores.entropy


@dataclass(frozen=True)
class ThresholdStrategy(Strategy):
    """Commits every candidate that passes `threshold`, plus forced progress so every iteration
    commits something (`forcing`, the authors' rules, docs/method.md section 3): `block` the best
    position of the current block when the block got nothing (their Dream code), `block+global`
    also the best candidate anywhere (their LLaDA code); None: the model family's
    (`config.for_model`). `sub_block_size`: commits stay in the current block's first sub-block
    of that many columns that still has masks (Fast-dLLM v2's small blocks). `strict_threshold`:
    a value equal to the threshold does not pass (Fast-dLLM v2's `p > threshold`)."""

    threshold_range: ClassVar[tuple[float, float]]  # (low, high]: the threshold's valid values
    unit: ClassVar[str] = ""
    threshold: float = 0.5
    forcing: Forcing | None = None
    sub_block_size: int | None = None
    strict_threshold: bool = False

    def __post_init__(self) -> None:
        low, high = self.threshold_range
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not low < self.threshold <= high:  # NaN fails too
            raise DecodeSettingError(f"`threshold` must be in ({low:g}, {high:g}]{self.unit} for {self.name} "
                                     f"selection, got {self.threshold}", "threshold")
        if self.forcing is not None:
            one_of("forcing", self.forcing, ("block", "block+global"))
        positive_int("sub_block_size", self.sub_block_size, allow_none=True)
        boolean("strict_threshold", self.strict_threshold)

    def commit_window(self) -> int | None:
        return self.sub_block_size

    def goodness(self, scores):
        """(B, n) higher is better; forced progress commits the best."""
        raise NotImplementedError

    def passes(self, scores):
        """(B, n) bool: positions whose proposal clears the threshold."""
        raise NotImplementedError


@register
@dataclass(frozen=True)
class Confidence(ThresholdStrategy):
    """p(proposal) >= threshold (Fast-dLLM)."""

    name: ClassVar[str] = "confidence"
    threshold_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    threshold: float = 0.9

    def scores_read(self) -> tuple[str, ...]:
        return ("confidence",)

    def goodness(self, scores):
        return scores.confidence

    def passes(self, scores):
        c = scores.confidence
        return c > self.threshold if self.strict_threshold else c >= self.threshold


@register
@dataclass(frozen=True)
class Entropy(ThresholdStrategy):
    """H(predicted distribution) <= threshold nats (dParallel, d3LLM)."""

    name: ClassVar[str] = "entropy"
    threshold_range: ClassVar[tuple[float, float]] = (0.0, 10.0)
    unit: ClassVar[str] = " nats"
    threshold: float = 0.5

    def scores_read(self) -> tuple[str, ...]:
        return ("entropy",)

    def goodness(self, scores):
        return -scores.entropy

    def passes(self, scores):
        h = scores.entropy
        return h < self.threshold if self.strict_threshold else h <= self.threshold


@register
@dataclass(frozen=True)
class NextToken(Strategy):
    """Greedy (or sampled) next-token decoding with a KV cache (`loop._generate_ar`)."""

    name: ClassVar[str] = "next-token"
    autoregressive: ClassVar[bool] = True
    config_settings: ClassVar[tuple[str, ...]] = ("max_new_tokens", "temperature", "seed")


@register
@dataclass(frozen=True)
class PromptLookup(NextToken):
    """Next-token decoding with prompt-lookup drafts verified greedily (`speculative.py`):
    the `next-token` output, in fewer forwards."""

    name: ClassVar[str] = "prompt-lookup"
    greedy_only: ClassVar[bool] = True


@register
@dataclass(frozen=True)
class SelfSpeculative(Strategy):
    """Block models, lossless (`exact.py`, docs/block-diffusion.md, "Exact decoding"): each
    forward drafts the model's next block by its masked prediction and verifies the drafts of
    the forward before causally, so the output is the model's greedy causal decode. Its drafts
    are the model's blocks: no setting of its own."""

    name: ClassVar[str] = "self-speculative"
    config_settings: ClassVar[tuple[str, ...]] = ("max_new_tokens", "block_size", "temperature")
    greedy_only: ClassVar[bool] = True
