"""Decode settings: `DecodeConfig`, the one validator of decode values, and the named presets.

A config is a selection strategy (strategies.py), a cache policy (policies.py), early stop and
the block schedule; every method of the comparison is a preset, decoded by the same loop
(loop.py):

| preset           | strategy                         | blocks                | cache                   | early stop |
|------------------|----------------------------------|-----------------------|-------------------------|------------|
| `vanilla`        | `TopK()`: best p, 1 per forward  | one at a time         | `NoCache()`             | no         |
| `fast-dllm`      | `Confidence(0.9)`                | one at a time         | `PrefixCache()`         | no         |
| `fast-dllm-dual` | `Confidence(0.9)`                | one at a time         | `PrefixCache(future_masks="cached")` | no |
| `dparallel`      | `Entropy(0.5)`                   | one at a time         | `NoCache()`             | no         |
| `d3llm`          | `Entropy(0.5)`                   | multi-block (add 0.1, activate 0.95) | `NoCache()` | yes   |
| `d3llm-cache`    | `Entropy(0.5)`                   | as `d3llm`            | `DelayedCache(1)`       | yes        |
| `ar`             | `NextToken()`                    | -                     | `KVCache()`             | at EOS     |
| `ar-spec`        | `PromptLookup()`                 | -                     | `KVCache()`             | at EOS     |
| `block`          | `TopK()`                         | the model's, in order | `BlockCache()`          | yes        |
| `fast-dllm-v2`   | `Confidence(0.9, sub-blocks of 8, p > 0.9)` | as `block` | `BlockCache()`          | yes        |
| `d3llm-block`    | `Entropy(0.5)`                   | as `block`            | `BlockCache()`          | yes        |
| `d3llm-exact`    | `SelfSpeculative()`: verified drafts | the model's, drafted | `CausalCache()`       | at EOS     |

Users name settings flat (`--set threshold=0.4`, `preset("d3llm", cache_delay=2)`, a request's
`threshold`): each name belongs to the config or to one of its parts, and a name the config's
parts do not hold is an error that says which strategy or policy has it. Every value is checked
here (each part checks its own fields when made); the CLI, the server, the runner and the loop
convert and call this module, never re-check. No torch: settings are read where it is absent.

Values follow docs/method.md sections 3-4 (the authors': entropy threshold 0.4-0.5 nats, block
add 0.1, activation 0.95, cache delay 1-2; Fast-dLLM's confidence threshold 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from d3llm.decode.parts import MAX_TOKENS, Part, boolean, positive_int
from d3llm.decode.policies import (
    CACHE_POLICIES, BlockCache, CachePolicy, CausalCache, DelayedCache, KVCache, NoCache, PrefixCache,
)
from d3llm.decode.strategies import (
    STRATEGIES, Confidence, Entropy, NextToken, PromptLookup, SelfSpeculative, Strategy, ThresholdStrategy, TopK,
)
from d3llm.errors import DecodeSettingError

DEFAULT_BLOCK_SIZE = 32  # the authors' block length for LLaDA/Dream-style decoding
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0  # below 1e-3, logits / temperature overflow to inf
MAX_SEED = 2**63  # torch generators take a signed 64-bit seed


def check_seed(seed: object) -> None:
    """A sampling seed torch accepts, else a `DecodeSettingError` naming `seed` (also where the
    seed is ignored, greedy decoding: a bad value is still the caller's error)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise DecodeSettingError(f"`seed` must be an integer in [0, 2**63) (torch's seed range), got {seed!r}", "seed")


@dataclass(frozen=True)
class EarlyStop(Part):
    """Stop a row at its first committed EOS. `fill_after_eos`: write EOS over every column
    after it, committed ones too (d3LLM; None: the model's convention, `for_model`: False for
    Fast-dLLM v2 checkpoints, whose generate leaves them and ends a row once every column before
    its EOS is committed). `stale_candidates`: the columns just filled stay candidates for that
    iteration, as in the authors' loops, which read the masks before filling."""

    stale_candidates: bool = True
    fill_after_eos: bool | None = None

    def __post_init__(self) -> None:
        boolean("stale_candidates", self.stale_candidates)
        boolean("fill_after_eos", self.fill_after_eos, allow_none=True)


PARTS = ("strategy", "cache", "early_stop")  # the config's parts; their fields are settings too


@dataclass(frozen=True)
class DecodeConfig:
    method: str = "vanilla"  # the preset this config came from: a label for results, never a switch
    strategy: Strategy = TopK()
    cache: CachePolicy = NoCache()
    early_stop: EarlyStop | None = None
    max_new_tokens: int = 64  # response canvas length
    # block length (the last block may be shorter); None: the model's (`for_model`)
    block_size: int | None = None
    block_add_threshold: float = 1.0  # create the next block when the last reaches this progress
    block_activate_threshold: float = 1.0  # a block is fully active when its predecessor reaches this
    temperature: float = 0.0  # 0 = argmax; > 0 samples committed tokens from softmax(logits / T)
    seed: int = 0  # sampling seed (temperature > 0)

    def __post_init__(self) -> None:
        for part, kind in (("strategy", Strategy), ("cache", CachePolicy), ("early_stop", (EarlyStop, type(None)))):
            if not isinstance(getattr(self, part), kind):
                raise DecodeSettingError(f"`{part}` must be a {part} object or name, got {getattr(self, part)!r}",
                                         part)
        positive_int("max_new_tokens", self.max_new_tokens)
        positive_int("block_size", self.block_size, allow_none=True)
        for name in ("block_add_threshold", "block_activate_threshold"):
            value = getattr(self, name)
            if not _number(value) or not 0 < value <= 1:
                raise DecodeSettingError(f"`{name}` must be in (0, 1], got {value}", name)
        t = self.temperature
        if not _number(t) or not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):  # NaN fails too
            raise DecodeSettingError(f"`temperature` must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, "
                                     f"{MAX_TEMPERATURE:g}] (below it logits / temperature overflow), got {t}",
                                     "temperature")
        check_seed(self.seed)
        if self.strategy.greedy_only and t > 0:
            raise DecodeSettingError(f"`temperature` must be 0 with method {self.method!r} (it verifies drafts against "
                                     "the greedy choice, so it decodes exactly the greedy output)", "temperature")

    @property
    def is_autoregressive(self) -> bool:
        return self.strategy.autoregressive

    def settings(self) -> dict:
        """Every setting by its flat name (the parts by their names, then their fields)."""
        out = {"method": self.method}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in PARTS:
                out[f.name] = value.name if f.name != "early_stop" else value is not None
                out.update(value.settings() if value is not None else {})
            elif f.name != "method":
                out[f.name] = value
        return out

    def override(self, **changes) -> "DecodeConfig":
        """A copy with `changes`, flat setting names (`threshold=0.4`, `cache="delayed"`,
        `early_stop=False`); a part named by its name (or given as an object) is switched first,
        with its defaults, then its settings apply. A name this config's parts do not hold is an
        error naming the parts that do."""
        unknown = sorted(set(changes) - set(setting_types()) - {"method"})
        if unknown:
            raise DecodeSettingError(f"unknown decode setting(s) {unknown}; valid: {', '.join(sorted(setting_types()))}",
                                     unknown[0])
        parts = {part: _part(part, changes.pop(part), getattr(self, part)) if part in changes else getattr(self, part)
                 for part in PARTS}
        own, per_part = {}, {part: {} for part in PARTS}
        for name, value in changes.items():
            holder = next((p for p in PARTS if parts[p] is not None and name in _field_names(parts[p])), None)
            if name in _field_names(self):
                own[name] = value
            elif holder is None:
                raise DecodeSettingError(_no_effect(self.method, name, parts), name)
            else:
                per_part[holder][name] = value
        for part, values in per_part.items():
            if values:
                parts[part] = replace(parts[part], **values)
        return replace(self, **parts, **own)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field_names(obj) -> set[str]:
    return {f.name for f in fields(obj)}


def _part(part: str, value, current):
    """The part `value` names: an object as given; a name, the current part if it has that name,
    else a new one with its defaults; early stop: true / false."""
    if part == "early_stop":
        if isinstance(value, EarlyStop) or value is None:
            return value
        if not isinstance(value, bool):
            raise DecodeSettingError(f"`early_stop` must be true or false, got {value!r}", "early_stop")
        return (current or EarlyStop()) if value else None
    registry = STRATEGIES if part == "strategy" else CACHE_POLICIES
    if not isinstance(value, str):
        return value  # an object (checked by DecodeConfig)
    if value not in registry:
        raise DecodeSettingError(f"`{part}` must be one of {', '.join(registry)}, got {value!r}", part)
    return current if current.name == value else registry[value]()


def _no_effect(method: str, name: str, parts: dict) -> str:
    """Why setting `name` cannot apply to a config with these parts: the parts that hold it."""
    if name in _field_names(EarlyStop):
        return f"`{name}` has no effect with method {method!r} (early_stop off): it concerns the columns early stop fills"
    strategy_holders = [cls.name for cls in STRATEGIES.values() if name in _field_names(cls)]
    if strategy_holders:
        return (f"`{name}` has no effect with method {method!r} (strategy {parts['strategy'].name}): it is a setting "
                f"of strategy {', '.join(strategy_holders)}")
    cache_holders = [cls.name for cls in CACHE_POLICIES.values() if name in _field_names(cls)]
    return (f"`{name}` has no effect with method {method!r} (cache {parts['cache'].name}): it is a setting of "
            f"cache {', '.join(cache_holders)}")


def setting_types() -> dict[str, str]:
    """Flat setting name -> its annotated type (text), over the config and every registered part."""
    types = {f.name: str(f.type) for f in fields(DecodeConfig) if f.name not in PARTS and f.name != "method"}
    types.update(strategy="str", cache="str", early_stop="bool")
    for cls in (*STRATEGIES.values(), *CACHE_POLICIES.values(), EarlyStop):
        types.update({f.name: str(f.type) for f in fields(cls)})
    return types


_MULTI_BLOCK = dict(block_add_threshold=0.1, block_activate_threshold=0.95, early_stop=EarlyStop())
# block models: no official loop to follow at early stop, so the columns it fills are no candidates
_IN_ORDER = dict(cache=BlockCache(), early_stop=EarlyStop(stale_candidates=False))

PRESETS: dict[str, DecodeConfig] = {
    "vanilla": DecodeConfig(method="vanilla"),
    "fast-dllm": DecodeConfig(method="fast-dllm", strategy=Confidence(0.9), cache=PrefixCache()),
    "fast-dllm-dual": DecodeConfig(method="fast-dllm-dual", strategy=Confidence(0.9),
                                   cache=PrefixCache(future_masks="cached")),
    "dparallel": DecodeConfig(method="dparallel", strategy=Entropy(0.5)),
    "d3llm": DecodeConfig(method="d3llm", strategy=Entropy(0.5), **_MULTI_BLOCK),
    "d3llm-cache": DecodeConfig(method="d3llm-cache", strategy=Entropy(0.5), cache=DelayedCache(cache_delay=1),
                                **_MULTI_BLOCK),
    "ar": DecodeConfig(method="ar", strategy=NextToken(), cache=KVCache()),
    "ar-spec": DecodeConfig(method="ar-spec", strategy=PromptLookup(), cache=KVCache()),
    "block": DecodeConfig(method="block", **_IN_ORDER),
    # Fast-dLLM v2's generate: sub-blocks of 8, `p > threshold` (a model's blocks of 8 or fewer: one sub-block)
    "fast-dllm-v2": DecodeConfig(method="fast-dllm-v2", strategy=Confidence(0.9, sub_block_size=8,
                                                                            strict_threshold=True), **_IN_ORDER),
    "d3llm-block": DecodeConfig(method="d3llm-block", strategy=Entropy(0.5), **_IN_ORDER),
    "d3llm-exact": DecodeConfig(method="d3llm-exact", strategy=SelfSpeculative(), cache=CausalCache()),
}
METHODS: tuple[str, ...] = tuple(PRESETS)
AR_METHODS: tuple[str, ...] = tuple(name for name, c in PRESETS.items() if c.is_autoregressive)


def preset(name: str, **overrides) -> DecodeConfig:
    """The named preset with `overrides` applied (validated); user-facing code goes through
    `resolve_config`, which also refuses settings the model or the method would ignore."""
    if name not in PRESETS:
        raise DecodeSettingError(f"unknown method {name!r}; choose one of {', '.join(PRESETS)}", "method")
    return PRESETS[name].override(**overrides)


def default_method(family: str) -> str:
    """The method a model of `family` decodes with unless one is named."""
    return {"ar": "ar", "block": "d3llm-block"}.get(family, "d3llm")


def validation_method(family: str) -> str:
    """The method training validates a model of `family` with unless its recipe names one: its
    one-token-per-forward baseline."""
    return {"ar": "ar", "block": "block"}.get(family, "vanilla")


def model_block_size(family: str, trained: int | None, recorded: int | None) -> int | None:
    """The block size a model decodes with unless one is given: a block model's trained blocks,
    a LLaDA/Dream model's recorded decode block size, else DEFAULT_BLOCK_SIZE (None: AR)."""
    if family == "block":
        return trained
    return None if family == "ar" else recorded or DEFAULT_BLOCK_SIZE


_BLOCK_METHODS = "block, fast-dllm-v2, d3llm-block or d3llm-exact"  # a block model's presets (`methods_for`)


def check_model_kind(config: DecodeConfig, family: str) -> None:
    """The strategy and the cache policy decode models of `family`: next-token strategies
    autoregressive models only, the others diffusion models; each policy its `families`; strategy
    self-speculative and cache causal only together (`d3llm-exact`, its own algorithm)."""
    method, cache = config.method, config.cache
    if config.is_autoregressive != (family == "ar"):
        raise DecodeSettingError(
            f"`method` {method!r} cannot decode a diffusion model ({family}): it needs an autoregressive model"
            if config.is_autoregressive else
            f"`method` {method!r} cannot decode an autoregressive model: it needs a diffusion model (use 'ar')", "method")
    own = method in PRESETS and PRESETS[method].cache.name == cache.name  # the method's, not --set
    if family == "block" and family not in cache.families:
        raise DecodeSettingError(f"a block model decodes with methods {_BLOCK_METHODS} (cache block or causal, or "
                                 f"none), not {method!r} with cache {cache.name!r}", "method" if own else "cache")
    if isinstance(config.strategy, SelfSpeculative) != isinstance(cache, CausalCache):
        raise DecodeSettingError(f"strategy self-speculative decodes with cache causal and cache causal serves no "
                                 f"other strategy (method d3llm-exact), not strategy {config.strategy.name} with "
                                 f"cache {cache.name}", "strategy" if own else "cache")
    if family not in cache.families:
        kinds = {"block": "block-diffusion models", "ar": "autoregressive models"}.get(cache.families[0], "dLLMs")
        raise DecodeSettingError(f"`method` {method!r} (cache {cache.name}) decodes {kinds} only, not a {family} "
                                 "model", "method")
    if family == "block" and config.block_add_threshold < 1:
        raise DecodeSettingError("a block model decodes its blocks one after the other: `block_add_threshold` "
                                 f"must be 1, got {config.block_add_threshold}", "block_add_threshold")


def methods_for(family: str) -> tuple[str, ...]:
    """The presets that decode a model of `family` as they are (a block model: its four, which
    use its exact caches; the uncached presets would decode it too, as references)."""
    def fits(config: DecodeConfig) -> bool:
        try:
            check_model_kind(config, family)
        except DecodeSettingError:
            return False
        return family != "block" or isinstance(config.cache, (BlockCache, CausalCache))

    return tuple(name for name, config in PRESETS.items() if fits(config))


# The authors' LLaDA loops commit the lowest-entropy candidate of every iteration on top of the
# block rule; their Dream loops do not (docs/method.md section 3, "Forced progress").
FAMILY_FORCING = {"llada": "block+global"}


def for_model(config: DecodeConfig, family: str, trained_block_size: int | None,
              decode_block_size: int | None = None, alignment: str = "response") -> DecodeConfig:
    """`config` as a model of `family` decodes with it: the block size of `model_block_size`
    unless one is given (a block model: its own, no other); forced progress left open
    (`forcing` None) the family's authors' rule (`FAMILY_FORCING`); `fill_after_eos` left open
    true, except for a block model whose blocks are aligned to position 0 (`alignment`
    "absolute", Fast-dLLM v2's checkpoints), whose authors' generate leaves those columns."""
    check_model_kind(config, family)
    if isinstance(config.strategy, ThresholdStrategy) and config.strategy.forcing is None:
        config = replace(config, strategy=replace(config.strategy, forcing=FAMILY_FORCING.get(family, "block")))
    if config.early_stop is not None and config.early_stop.fill_after_eos is None:
        config = replace(config, early_stop=replace(config.early_stop, fill_after_eos=alignment != "absolute"))
    if family != "block":  # (an AR model's canvas takes the default's blocks; its decoders ignore them)
        blocks = model_block_size(family, trained_block_size, decode_block_size) or DEFAULT_BLOCK_SIZE
        return config if config.block_size else replace(config, block_size=blocks)
    if config.block_size not in (None, trained_block_size):
        raise DecodeSettingError(f"this block model was trained with blocks of {trained_block_size} tokens, not "
                                 f"`block_size` {config.block_size}: decode it with method {_BLOCK_METHODS} "
                                 "and no block_size", "block_size")
    return config if trained_block_size is None else replace(config, block_size=trained_block_size)


def for_facts(config: DecodeConfig, facts) -> DecodeConfig:
    """`for_model` for a loaded model's `ModelFacts` (d3llm.models.lm)."""
    return for_model(config, facts.family, facts.block_size, facts.decode_block_size, facts.block_alignment)


def inapplicable(config: DecodeConfig, names) -> dict[str, str]:
    """Setting name -> message, for each setting in `names` that `config` would ignore (the
    parts refuse settings they do not hold already, in `override`)."""
    problems, strategy = {}, config.strategy
    takes = strategy.config_settings
    for name in names:
        if takes is not None and name not in takes and name not in strategy.settings():
            problems[name] = (f"`{name}` has no effect with method {config.method!r} (strategy {strategy.name} takes "
                              f"only {', '.join(takes)})")
        elif name == "seed" and config.temperature == 0:
            problems[name] = (f"`seed` has no effect with method {config.method!r} (temperature 0): it seeds "
                              "sampling; set temperature > 0")
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
    config = config.override(**overrides)
    problems = inapplicable(config, overrides)
    if problems:
        raise DecodeSettingError("; ".join(problems.values()), next(iter(problems)))
    check_model_kind(config, family)
    return config


def parse_overrides(items: list[str]) -> dict:
    """`["threshold=0.4", "early_stop=false", "refresh_interval=none"]` -> typed overrides.

    Values are converted by the type of the setting they name (`setting_types`), so a typo in
    a name or a value is an error that says which."""
    types = setting_types()
    out: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in types:
            raise DecodeSettingError(f"decode setting {item!r} must be NAME=VALUE with NAME one of "
                                     f"{', '.join(types)}", name if sep else None)
        kind, text = types[name], text.strip()
        try:
            out[name] = _convert(kind, text)
        except ValueError:
            raise DecodeSettingError(f"decode setting {name}: cannot read {text!r} as {kind}", name) from None
    return out


def _convert(kind: str, text: str):
    if text.lower() == "none" and "None" in kind:
        return None
    if kind.startswith("bool"):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(text)
        return text.lower() in ("true", "1", "yes")
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    return text


__all__ = ["AR_METHODS", "DEFAULT_BLOCK_SIZE", "DecodeConfig", "DecodeSettingError", "EarlyStop",
           "MAX_TOKENS", "METHODS", "PRESETS", "default_method", "for_facts", "for_model", "methods_for",
           "parse_overrides", "preset", "resolve_config", "setting_types", "validation_method"]
