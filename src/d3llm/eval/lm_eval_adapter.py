"""lm-evaluation-harness adapter: our models and decode presets as the lm-eval model `d3llm`.

    pip install 'd3llm[eval]'
    python -m d3llm.eval.lm_eval_cli run --model d3llm --tasks gsm8k --batch_size 16 \\
        --model_args model=tiny-teacher,method=d3llm,max_new_tokens=256,threshold=0.4

    import lm_eval, d3llm.eval.lm_eval_adapter  # importing registers "d3llm"
    lm_eval.simple_evaluate(model="d3llm", model_args="model=PATH,method=d3llm-cache", tasks=[...])

`python -m d3llm.eval.lm_eval_cli` is lm-eval's own command line with the model registered
(the plain `lm_eval` command does not import this package). Model arguments: `model` or
`pretrained` (as lm-eval's HF models name it: a bundled name or folder), `method` (a decode
preset; default d3llm, or ar for AR models),
`max_new_tokens` (the response canvas; default: each task's `max_gen_toks`), `batch_size`
(prompts decoded together; on lm-eval's command line give `--batch_size N` instead, whose
default is 1), `dtype` (auto | float32 | bfloat16 | float16), `device` (auto | cpu | cuda |
cuda:N | mps; lm-eval's own `--device` sets it), `chat` (wrap each context as one user message in the model's chat
template; default true, and skipped when lm-eval's `--apply_chat_template` has formatted it),
and any `DecodeConfig` field (`threshold=0.4`, `block_size=32`, ...).

Only generation tasks (`output_type: generate_until`) are supported: a diffusion model has no
left-to-right likelihood. A diffusion decode fills its whole canvas, so stop sequences
(`until`) cut the decoded text afterwards, as in the LLaDA and d3LLM evaluation code.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from d3llm.decode import DecodeConfig, generate, resolve_config
from d3llm.errors import D3llmError
from d3llm.models import load_model, resolve_device_dtype
from d3llm.models.loading import is_auto_dtype
from d3llm.models.tokenizer import prompt_ids

# A child of lm-eval's own logger: the harness's handler and level (LMEVAL_LOG_LEVEL) apply,
# so the TPF line below shows beside lm-eval's own INFO lines.
log = logging.getLogger("lm_eval.models.d3llm")

# `--batch_size auto` (or auto:N): lm-eval's HF model probes GPU memory for the largest batch
# that fits; a diffusion decode's memory depends on the canvas, so d3llm decodes batches of
# this size instead (capped by `--max_batch_size`), and says so in one log line. 16: the
# batch size of every d3llm command that decodes a batch of prompts (`eval`, `sweep`, `trajectories`).
AUTO_BATCH_SIZE = 16

# Generation kwargs lm-eval tasks send that the decode loop honours; `do_sample` and
# `temperature` map to DecodeConfig.temperature (0 = argmax).
SUPPORTED_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature"}


@register_model("d3llm")
class D3llmLM(LM):
    """lm-eval `LM` that answers `generate_until` requests with the d3llm decode loop."""

    def __init__(self, model: str | None = None, method: str | None = None, max_new_tokens: int | None = None,
                 batch_size: int | str | None = AUTO_BATCH_SIZE, dtype: str = "auto", chat: bool = True,
                 device: str | None = None, max_batch_size: int | None = None, pretrained: str | None = None,
                 **settings) -> None:
        super().__init__()
        model = _model_name(model, pretrained)
        device, torch_dtype = resolve_device_dtype(_device(device), dtype,
                                                   names=("model_args device", "model_args dtype"))
        batch_size = _batch_size(batch_size, max_batch_size)
        # "auto" stays "auto": the model's decode recipe's dtype on a CPU, as the commands load it
        self.lm = load_model(model, dtype="auto" if is_auto_dtype(dtype) else torch_dtype, device=device)
        fixed = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        # every setting is checked (and one the method would ignore refused) before the first forward
        self.config = resolve_config(method, self.lm.facts.family, self.lm.recipe, **settings, **fixed)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.chat = chat
        self.harness_templates = False  # set when lm-eval formats chats through apply_chat_template
        self.num_tokens = self.forwards = 0  # totals over every request: TPF of the whole run

    # --- what lm-eval asks of a model -------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode every request's context and cut the text at its first stop sequence."""
        answers: list[str | None] = [None] * len(requests)
        # A progress bar on stderr as lm-eval's own models draw it (off with disable_tqdm),
        # with the running TPF beside it.
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests")
        for (config, until), indices in self._groups(requests).items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for i, text in zip(chunk, self._decode([requests[i].args[0] for i in chunk], config)):
                    answers[i] = _cut(text, until)
                bar.set_postfix_str(f"TPF {self.tokens_per_forward:.2f}", refresh=False)
                bar.update(len(chunk))
        bar.close()
        log.info("d3llm %s / %s: %d tokens in %d forwards, TPF %.2f (in the results' config as "
                 "d3llm_tokens_per_forward)", self.lm.name, self.config.method, self.num_tokens, self.forwards,
                 self.tokens_per_forward)
        return answers  # type: ignore[return-value]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "the d3llm lm-eval model supports generation tasks only (output_type: generate_until); "
            "a diffusion LM has no left-to-right log-likelihood, so loglikelihood/multiple-choice tasks "
            "cannot be scored with it")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.loglikelihood(requests)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self.harness_templates = True
        return self.lm.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        return str(self.lm.path).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.lm.tokenizer.chat_template

    def get_model_info(self) -> dict:
        """Recorded by lm-eval in its results: what decoded the answers, and its TPF."""
        return {"d3llm_model": self.lm.name, "d3llm_method": self.config.method,
                "d3llm_settings": asdict(self.config), "d3llm_max_new_tokens": self.max_new_tokens or "task",
                "d3llm_tokens_per_forward": self.tokens_per_forward, "d3llm_num_tokens": self.num_tokens,
                "d3llm_forwards": self.forwards, "d3llm_batch_size": self.batch_size}

    @property
    def tokens_per_forward(self) -> float:
        return self.num_tokens / max(self.forwards, 1)

    # --- helpers ------------------------------------------------------------------------------

    def _groups(self, requests) -> dict[tuple[DecodeConfig, tuple[str, ...]], list[int]]:
        """Request indices grouped by (decode config, stop sequences): one batch shares both."""
        groups: dict[tuple[DecodeConfig, tuple[str, ...]], list[int]] = {}
        for i, request in enumerate(requests):
            config, until = self._request_config(request.args[1])
            groups.setdefault((config, tuple(until)), []).append(i)
        return groups

    def _request_config(self, gen_kwargs: dict) -> tuple[DecodeConfig, list[str]]:
        """The decode config and stop sequences of one request's generation kwargs."""
        kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_new_tokens or 256)
        unsupported = sorted(set(kwargs) - SUPPORTED_GEN_KWARGS)
        if unsupported:
            raise D3llmError(f"generation kwargs {unsupported} are not supported by d3llm decoding "
                             f"(supported: {', '.join(sorted(SUPPORTED_GEN_KWARGS))})")
        config = self.config.override(max_new_tokens=self.max_new_tokens or kwargs["max_gen_toks"],
                                      temperature=kwargs["temperature"] if kwargs["do_sample"] else 0.0)
        return config, [s for s in kwargs["until"] if s]

    def _encode(self, context: str) -> list[int]:
        """Token ids of a context: wrapped as a user message unless lm-eval formatted the chat."""
        if self.chat and not self.harness_templates:
            return prompt_ids(self.lm.tokenizer, context)
        return self.lm.tokenizer(context, add_special_tokens=False)["input_ids"]

    def _decode(self, contexts: list[str], config: DecodeConfig) -> list[str]:
        tok = self.lm.tokenizer
        out = generate(self.lm.model, [self._encode(c) for c in contexts], config, tok.pad_token_id)
        self.num_tokens += sum(out.num_tokens)
        self.forwards += sum(out.row_forwards)
        return [tok.decode(ids, skip_special_tokens=True) for ids in out.sequences]


def _batch_size(batch_size: int | str | None, max_batch_size: int | None) -> int:
    """Prompts decoded together: an integer (lm-eval's --batch_size is text), None for the
    default (16), or 'auto' / 'auto:N', which is AUTO_BATCH_SIZE capped by `max_batch_size`
    (lm-eval passes that only to bound 'auto'; with an integer batch size it is ignored, as
    lm-eval's HF model ignores it)."""
    if batch_size is None:
        return AUTO_BATCH_SIZE
    if isinstance(batch_size, str) and batch_size.strip().isdigit():
        batch_size = int(batch_size)
    if isinstance(batch_size, str) and batch_size.strip().split(":")[0] == "auto":
        chosen = min(AUTO_BATCH_SIZE, max_batch_size) if max_batch_size else AUTO_BATCH_SIZE
        log.warning("batch_size %r: d3llm does not probe memory for a batch size; decoding %d prompts together "
                    "(give an integer --batch_size to choose)", batch_size, chosen)
        return chosen
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise D3llmError(f"`batch_size` must be a positive integer or 'auto' (= {AUTO_BATCH_SIZE}), "
                         f"got {batch_size!r}")
    return batch_size


def _model_name(model: str | None, pretrained: str | None) -> str:
    """`model=` (ours) or `pretrained=` (what lm-eval's HF models take, so lm-eval users type it);
    neither: the bundled tiny-teacher."""
    if model is not None and pretrained is not None and model != pretrained:
        raise D3llmError(f"model_args name two models (model={model}, pretrained={pretrained}); give one")
    return model or pretrained or "tiny-teacher"


def _device(device: str | None) -> str:
    """The device to resolve: None is "auto" (the best available); lm-eval's command line asks
    for cuda:0 by default, so without CUDA (a laptop, CI) a CUDA request falls back to the
    best device there is, as lm-eval's own HF model does."""
    if device is None:
        return "auto"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        # lm-eval's command line sends "cuda:0" when no --device is given: no warning for that
        say = log.info if device == "cuda:0" else log.warning
        say("device %r is not available (no CUDA); decoding on the best device there is", device)
        return "auto"
    return device


def _cut(text: str, until: list[str]) -> str:
    """`text` up to the first occurrence of any stop sequence."""
    for stop in until:
        text = text.split(stop, 1)[0]
    return text

