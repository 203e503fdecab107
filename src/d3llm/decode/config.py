"""Decode configuration: one frozen, validated dataclass; named presets.

Every method of the comparison is a point in the same space of settings, decoded by the
same loop (`d3llm.decode.loop`):

| preset        | selection                    | blocks                       | cache            | early stop |
|---------------|------------------------------|------------------------------|------------------|------------|
| `vanilla`     | top-`tokens_per_step` by p   | one at a time                | none             | no         |
| `fast-dllm`   | p >= 0.9 (+ best one)        | one at a time                | prefix           | no         |
| `fast-dllm-dual` | as `fast-dllm`            | one at a time                | prefix + suffix  | no         |
| `dparallel`   | H <= 0.5 nats (+ best one)   | one at a time                | none             | no         |
| `d3llm`       | H <= 0.5 nats (+ best one)   | multi-block (add 0.1, act 0.95) | none          | yes        |
| `d3llm-cache` | as `d3llm`                   | as `d3llm`                   | delayed, delay 1 | yes        |
| `ar`          | greedy next token (AR models)| -                            | KV cache         | at EOS     |
| `ar-spec`     | `ar` + prompt-lookup drafts  | -                            | KV cache         | at EOS     |
| `block`       | top-1 by p (block models)    | the model's, in order        | exact block cache| yes        |
| `fast-dllm-v2`| p >= 0.9 (+ best one)        | the model's, in order        | exact block cache| yes        |
| `d3llm-block` | H <= 0.5 nats (+ best one)   | the model's, in order        | exact block cache| yes        |

The last three decode `block`-family models only (block diffusion, docs/block-diffusion.md),
and a block model decodes with them or with cache `none` (the uncached reference): its blocks
are the ones it was trained with (`block_size` None = the model's), one after the other. The
other presets leave `block_size` None too: a LLaDA/Dream model decodes with the block size
stored with it (`d3llm export --decode-block-size`), else 32.

Settings follow docs/method.md section 3-4 (authors' values: entropy
threshold 0.4-0.5 nats, block add 0.1, activation 0.95, cache delay 1-2; Fast-dLLM's
confidence threshold 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from d3llm.errors import D3llmError

Strategy = Literal["topk", "confidence", "entropy"]
CachePolicy = Literal["none", "prefix", "dual", "delayed", "block"]
Forcing = Literal["block", "block+global"]
RankBy = Literal["confidence", "entropy", "position"]
STRATEGIES = ("topk", "confidence", "entropy")
DEFAULT_BLOCK_SIZE = 32  # the authors' block length for LLaDA/Dream-style decoding
AR_METHODS = ("ar", "ar-spec")  # the presets of autoregressive models
CACHE_POLICIES = ("none", "prefix", "dual", "delayed", "block")


# Bounds checked before any tensor is made: a canvas, block or delay of more than 2**20 tokens
# is a typo (a 99999999999999999999 would otherwise overflow torch or hang), and a positive
# temperature below 1e-3 turns logits / T into inf and the probabilities into NaN.
MAX_TOKENS = 1 << 20
MIN_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class DecodeConfig:
    method: str = "vanilla"  # preset name this config came from ("ar" selects the AR decoder)
    max_new_tokens: int = 64  # response canvas length
    # block length (the last block may be shorter); None: the model's (`for_model`): a block model's
    # trained blocks, a LLaDA/Dream model's recorded decode block size, else DEFAULT_BLOCK_SIZE
    block_size: int | None = None
    strategy: Strategy = "topk"  # how masked positions are chosen for commitment
    tokens_per_step: int = 1  # topk: positions committed per forward in the current block
    # topk: most probable proposals (LLaDA), lowest entropy (Dream) or leftmost (left to right in the block)
    rank_by: RankBy = "confidence"
    threshold: float = 0.5  # entropy: max nats; confidence: min probability of the argmax
    block_add_threshold: float = 1.0  # create the next block when the last reaches this progress
    block_activate_threshold: float = 1.0  # a block is fully active when its predecessor reaches this
    # forced progress (select.py): "block" the best of the current block when it got nothing (the
    # authors' Dream code), "block+global" also the best candidate anywhere (their LLaDA code);
    # None: the model family's (`for_model`)
    forcing: Forcing | None = None
    early_stop: bool = False  # write EOS over every column after the first committed EOS
    # early stop: the columns it has just filled stay candidates for that iteration, as in the
    # authors' loops, which read the masks before filling (a forward may then "commit" into them,
    # and the fill writes EOS over them again); False: candidates are the masks after the fill
    stale_candidates: bool = True
    # early stop writes EOS over the columns after the first EOS (d3LLM); False (Fast-dLLM v2's
    # generate): leaves them, and a row is done once every column before its first EOS is
    # committed; None: the model's convention (`for_model`: False for Fast-dLLM v2 checkpoints)
    fill_after_eos: bool | None = None
    # threshold strategies commit only inside the current block's first sub-block of this many
    # columns that still has masks (Fast-dLLM v2's small blocks); None: anywhere in created blocks
    sub_block_size: int | None = None
    strict_threshold: bool = False  # a threshold passes above it only (Fast-dLLM v2's `p > threshold`)
    cache: CachePolicy = "none"  # KV-cache policy
    cache_delay: int = 1  # delayed: iterations a completed block waits before it is cached
    refresh_interval: int | None = None  # delayed: recompute everything every N iterations (None: off)
    # delayed: while a completed block of a row waits, the row forwards its whole canvas (True, the
    # official code) or only from its cache boundary on, the settled prefix's keys reused (False)
    refresh_waiting: bool = True
    # forward the blocks not created yet (True, the official code: attention over the whole canvas)
    # or stop each row's forwards at the end of its last created block (False: less work; an
    # approximation for bidirectional models, exact for block models)
    forward_uncreated: bool = True
    # prefix / delayed: read the masks after each row's last created block from its cache (their
    # keys from the row's last full forward; Fast-dLLM's dual cache, for any number of created
    # blocks) instead of forwarding them every iteration (False, the official code). An
    # approximation: those keys are not recomputed as the blocks before them fill in
    cache_uncreated: bool = False
    temperature: float = 0.0  # 0 = argmax; > 0 samples committed tokens from softmax(logits / T)
    seed: int = 0  # sampling seed (temperature > 0)

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "block_size", "tokens_per_step", "sub_block_size"):
            value = getattr(self, name)
            if name in ("block_size", "sub_block_size") and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_TOKENS:
                raise D3llmError(f"`{name}` must be a positive integer, got {value!r} (at most {MAX_TOKENS})")
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("cache", self.cache, CACHE_POLICIES)
        if self.forcing is not None:
            _choice("forcing", self.forcing, ("block", "block+global"))
        if self.fill_after_eos is not None and not isinstance(self.fill_after_eos, bool):
            raise D3llmError(f"`fill_after_eos` must be true, false or none, got {self.fill_after_eos!r}")
        _choice("rank_by", self.rank_by, ("confidence", "entropy", "position"))
        if self.strategy == "entropy" and not 0 < self.threshold <= 10:
            raise D3llmError(f"`threshold` must be in (0, 10] nats for entropy selection, got {self.threshold}")
        if self.strategy == "confidence" and not 0 < self.threshold <= 1:
            raise D3llmError(f"`threshold` must be in (0, 1] for confidence selection, got {self.threshold}")
        for name in ("block_add_threshold", "block_activate_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise D3llmError(f"`{name}` must be in (0, 1], got {value}")
        if isinstance(self.cache_delay, bool) or not isinstance(self.cache_delay, int) \
                or not 0 <= self.cache_delay <= MAX_TOKENS:
            raise D3llmError(f"`cache_delay` must be >= 0 and at most {MAX_TOKENS}, got {self.cache_delay!r}")
        for name in ("refresh_waiting", "forward_uncreated", "cache_uncreated", "early_stop", "stale_candidates",
                     "strict_threshold"):
            if not isinstance(getattr(self, name), bool):
                raise D3llmError(f"`{name}` must be true or false, got {getattr(self, name)!r}")
        if self.cache_uncreated and not self.forward_uncreated:
            raise D3llmError("`cache_uncreated` reads the masks after the created blocks from the cache, which a "
                             "full forward fills: it needs `forward_uncreated` true")
        if self.refresh_interval is not None and (isinstance(self.refresh_interval, bool) or not isinstance(
                self.refresh_interval, int) or not 1 <= self.refresh_interval <= MAX_TOKENS):
            raise D3llmError(f"`refresh_interval` must be >= 1 and at most {MAX_TOKENS}, or None (off), "
                             f"got {self.refresh_interval!r}")
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature < float("inf")):  # NaN fails too
            raise D3llmError(f"`temperature` must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g} (below it "
                             f"logits / temperature overflow), got {self.temperature}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise D3llmError(f"`seed` must be an integer in [0, 2**63) (torch's seed range), got {self.seed!r}")

    @property
    def is_autoregressive(self) -> bool:
        return self.method in AR_METHODS

    def override(self, **changes) -> "DecodeConfig":
        """A copy with `changes`; unknown names are an error that lists the valid ones."""
        valid = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise D3llmError(f"unknown decode setting(s) {unknown}; valid: {', '.join(sorted(valid))}")
        return replace(self, **changes)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise D3llmError(f"`{name}` must be one of {', '.join(allowed)}, got {value!r}")


_MULTI_BLOCK = dict(strategy="entropy", threshold=0.5, block_add_threshold=0.1,
                    block_activate_threshold=0.95, early_stop=True)

PRESETS: dict[str, DecodeConfig] = {
    "vanilla": DecodeConfig(method="vanilla"),
    "fast-dllm": DecodeConfig(method="fast-dllm", strategy="confidence", threshold=0.9, cache="prefix"),
    "fast-dllm-dual": DecodeConfig(method="fast-dllm-dual", strategy="confidence", threshold=0.9, cache="dual"),
    "dparallel": DecodeConfig(method="dparallel", strategy="entropy", threshold=0.5),
    "d3llm": DecodeConfig(method="d3llm", **_MULTI_BLOCK),
    "d3llm-cache": DecodeConfig(method="d3llm-cache", cache="delayed", cache_delay=1, **_MULTI_BLOCK),
    "ar": DecodeConfig(method="ar"),
    "ar-spec": DecodeConfig(method="ar-spec"),
    # block models: no official loop to follow at early stop, so the columns it fills are no candidates
    "block": DecodeConfig(method="block", block_size=None, cache="block", early_stop=True, stale_candidates=False),
    # Fast-dLLM v2's generate: sub-blocks of 8, `p > threshold` (a model's blocks of 8 or fewer: one sub-block)
    "fast-dllm-v2": DecodeConfig(method="fast-dllm-v2", block_size=None, strategy="confidence", threshold=0.9,
                                 cache="block", early_stop=True, stale_candidates=False, sub_block_size=8,
                                 strict_threshold=True),
    "d3llm-block": DecodeConfig(method="d3llm-block", block_size=None, strategy="entropy", threshold=0.5,
                                cache="block", early_stop=True, stale_candidates=False),
}
METHODS: tuple[str, ...] = tuple(PRESETS)


def preset(name: str, **overrides) -> DecodeConfig:
    """The named preset with `overrides` applied (validated). A building block: settings the
    method ignores are accepted here; user-facing code goes through `resolve_config`."""
    if name not in PRESETS:
        raise DecodeSettingError(f"unknown method {name!r}; choose one of {', '.join(PRESETS)}", "method")
    return PRESETS[name].override(**overrides)


class DecodeSettingError(D3llmError):
    """A decode setting that is invalid, or that the method would ignore; `setting` names it
    (a `DecodeConfig` field, or "method")."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


def default_method(family: str) -> str:
    """The method a model of `family` decodes with unless one is named."""
    return {"ar": "ar", "block": "d3llm-block"}.get(family, "d3llm")


def validation_method(family: str) -> str:
    """The method training validates a model of `family` with unless its recipe names one: its
    one-token-per-forward baseline."""
    return {"ar": "ar", "block": "block"}.get(family, "vanilla")


def check_model_kind(config: DecodeConfig, family: str) -> None:
    """`ar` decodes autoregressive models only; the block cache, block models only, which decode
    their blocks in order (with the block cache, or none); the rest, LLaDA/Dream-style models."""
    if config.is_autoregressive and family != "ar":
        raise DecodeSettingError(f"`method` {config.method!r} cannot decode a diffusion model ({family}): it "
                                 "needs an autoregressive model", "method")
    if config.method == "ar-spec" and config.temperature > 0:
        raise DecodeSettingError("`temperature` must be 0 with method 'ar-spec' (greedy verification of the "
                                 "drafts); sample with method 'ar'", "temperature")
    if not config.is_autoregressive and family == "ar":
        raise DecodeSettingError(f"`method` {config.method!r} cannot decode an autoregressive model: it needs a "
                                 "diffusion model (use 'ar')", "method")
    if config.cache == "block" and family != "block":
        raise DecodeSettingError(f"`method` {config.method!r} (cache block) decodes block-diffusion models only, "
                                 f"not a {family} model", "method")
    if family == "block" and config.cache not in ("block", "none"):
        own = config.method in PRESETS and PRESETS[config.method].cache == config.cache  # the method's, not --set
        raise DecodeSettingError(f"a block model decodes with methods block, fast-dllm-v2 or d3llm-block (cache block, "
                                 f"or none), not {config.method!r} with cache {config.cache!r}",
                                 "method" if own else "cache")
    if family == "block" and config.block_add_threshold < 1:
        raise DecodeSettingError("a block model decodes its blocks one after the other: `block_add_threshold` "
                                 f"must be 1, got {config.block_add_threshold}", "block_add_threshold")


def methods_for(family: str) -> tuple[str, ...]:
    """The presets that decode a model of `family` as they are (a block model: its three, which
    use its exact cache; the uncached presets would decode it too, as references)."""
    def fits(config: DecodeConfig) -> bool:
        try:
            for_model(config, family, None)
        except DecodeSettingError:
            return False
        return family != "block" or config.cache == "block"

    return tuple(name for name, config in PRESETS.items() if fits(config))


# The authors' LLaDA loops commit the lowest-entropy candidate of every iteration on top of the
# block rule; their Dream loops do not (docs/method.md section 3, "Forced progress").
FAMILY_FORCING = {"llada": "block+global"}


def for_model(config: DecodeConfig, family: str, model_block_size: int | None,
              decode_block_size: int | None = None, alignment: str = "response") -> DecodeConfig:
    """`config` with the block size a model of `family` decodes with: a block model's own (the
    one it was trained with, `model_block_size`); for a LLaDA/Dream model the given one, else its
    recorded default (`decode_block_size`), else DEFAULT_BLOCK_SIZE. Forced progress left open
    (`forcing` None) becomes the family's authors' rule (`FAMILY_FORCING`); `fill_after_eos` left
    open is true, except for a block model whose blocks are aligned to position 0 (`alignment`
    "absolute", Fast-dLLM v2's checkpoints), whose authors' generate leaves those columns."""
    check_model_kind(config, family)
    if config.forcing is None:
        config = config.override(forcing=FAMILY_FORCING.get(family, "block"))
    if config.fill_after_eos is None:  # Fast-dLLM v2's convention: early stop leaves the columns after the EOS
        config = config.override(fill_after_eos=alignment != "absolute")
    if family != "block":  # (an AR model's canvas takes the default's blocks too; its decoders ignore them)
        return config if config.block_size else config.override(block_size=decode_block_size or DEFAULT_BLOCK_SIZE)
    if config.block_size not in (None, model_block_size):
        raise DecodeSettingError(f"this block model was trained with blocks of {model_block_size} tokens, not "
                                 f"`block_size` {config.block_size}: decode it with method block, fast-dllm-v2 or "
                                 "d3llm-block and no block_size", "block_size")
    return config if model_block_size is None else config.override(block_size=model_block_size)


def for_facts(config: DecodeConfig, facts) -> DecodeConfig:
    """`for_model` for a loaded model's `ModelFacts` (d3llm.models.lm)."""
    return for_model(config, facts.family, facts.block_size, facts.decode_block_size, facts.block_alignment)


# What each setting depends on: (applies to this config?, why not). `max_new_tokens`,
# `temperature` apply to every method; `block_size`, the block thresholds and `early_stop`
# to every diffusion method. Checked by `resolve_config` for the settings a user gives.
_AR_SETTINGS = ("max_new_tokens", "temperature", "seed")
_APPLIES = {
    "tokens_per_step": (lambda c: c.strategy == "topk", "it is the topk strategy's step size"),
    "rank_by": (lambda c: c.strategy == "topk", "it orders the topk strategy's proposals"),
    "threshold": (lambda c: c.strategy != "topk", "strategy topk commits `tokens_per_step` positions; use a "
                                                  "threshold method (fast-dllm, dparallel, d3llm, ...)"),
    "forcing": (lambda c: c.strategy != "topk", "forced progress belongs to the threshold strategies"),
    "stale_candidates": (lambda c: c.early_stop, "it concerns the columns early stop fills"),
    "fill_after_eos": (lambda c: c.early_stop, "it concerns the columns after an EOS"),
    "strict_threshold": (lambda c: c.strategy != "topk", "it qualifies the threshold"),
    "sub_block_size": (lambda c: c.strategy != "topk", "it confines the threshold strategies' commits"),
    "cache_delay": (lambda c: c.cache == "delayed", "only the delayed cache (d3llm-cache) waits before caching"),
    "refresh_interval": (lambda c: c.cache == "delayed", "only the delayed cache (d3llm-cache) refreshes"),
    "refresh_waiting": (lambda c: c.cache == "delayed", "only the delayed cache (d3llm-cache) has waiting blocks"),
    "forward_uncreated": (lambda c: c.cache in ("none", "prefix", "delayed"),
                          "the dual cache forwards one block against a cached suffix, the block cache stops at the "
                          "current block already"),
    "cache_uncreated": (lambda c: c.cache in ("prefix", "delayed"),
                        "only the prefix and delayed caches forward the masks after the created blocks (the dual "
                        "cache reads them from its cache already)"),
    "seed": (lambda c: c.temperature > 0, "it seeds sampling; set temperature > 0"),
}


def inapplicable(config: DecodeConfig, names) -> dict[str, str]:
    """Setting name -> message, for each setting in `names` that `config` would ignore."""
    problems = {}
    for name in names:
        if config.is_autoregressive and name not in _AR_SETTINGS:
            problems[name] = (f"`{name}` has no effect with method {config.method!r} (next-token decoding with a "
                              f"KV cache takes only {', '.join(_AR_SETTINGS)})")
        elif name in _APPLIES and not _APPLIES[name][0](config):
            cache_bound = ("cache_delay", "refresh_interval", "refresh_waiting", "forward_uncreated",
                           "cache_uncreated")
            detail = f"cache {config.cache}" if name in cache_bound else (
                f"temperature {config.temperature:g}" if name == "seed" else
                "early_stop off" if name in ("stale_candidates", "fill_after_eos") else f"strategy {config.strategy}")
            problems[name] = f"`{name}` has no effect with method {config.method!r} ({detail}): {_APPLIES[name][1]}"
    return problems


def resolve_config(method: str | None, family: str, /, recipe: tuple[str, dict] | None = None,
                   **overrides) -> DecodeConfig:
    """The one way a user's decode settings become a `DecodeConfig` (the CLI, `d3llm.generate`,
    the server and the lm-eval adapter use it): `method` (None: the model's `recipe`, a
    (method, settings) pair such as a published checkpoint's, else `default_method`) with
    `overrides` on top, validated, for a model of `family`. A setting the method would ignore
    (`refresh_interval` without the delayed cache, `threshold` with topk, anything but
    max_new_tokens / temperature / seed with `ar`) is an error, not silently dropped; the
    recipe's own settings apply only when the user names no method."""
    if "method" in overrides:
        raise DecodeSettingError("`method` is not a setting: name the method itself (--method)", "method")
    if method is None and recipe is not None:
        config = preset(recipe[0], **recipe[1])
    else:
        config = preset(method or default_method(family))
    try:
        config = config.override(**overrides)
    except D3llmError as exc:  # a bad value: name the setting it is about
        named = [n for n in overrides if f"`{n}`" in str(exc)]
        raise DecodeSettingError(str(exc), named[0] if named else None) from None
    check_model_kind(config, family)
    problems = inapplicable(config, overrides)
    if problems:
        raise DecodeSettingError("; ".join(problems.values()), next(iter(problems)))
    return config


def parse_overrides(items: list[str]) -> dict:
    """`["threshold=0.4", "early_stop=false", "refresh_interval=none"]` -> typed overrides.

    Values are converted by the type of the `DecodeConfig` field they name, so a typo in a
    name or a value is an error that says which."""
    types = {f.name: f.type for f in fields(DecodeConfig)}
    out: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in types:
            raise D3llmError(f"decode setting {item!r} must be NAME=VALUE with NAME one of {', '.join(types)}")
        kind, text = str(types[name]), text.strip()
        try:
            if text.lower() == "none" and "None" in kind:
                out[name] = None
            elif kind.startswith("bool"):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                out[name] = text.lower() in ("true", "1", "yes")
            elif kind.startswith("int"):
                out[name] = int(text)
            elif kind.startswith("float"):
                out[name] = float(text)
            else:
                out[name] = text
        except ValueError:
            raise D3llmError(f"decode setting {name}: cannot read {text!r} as {kind}") from None
    return out
