"""Tokenizers: the bundled tiny models' own (built here), loading a model's tokenizer
(`load_tokenizer`), and a problem as token ids (`prompt_ids`, `encode_example`).

The tokenizer of the bundled tiny models is a byte-level BPE with one token per digit.

Digits are split one by one before BPE (as in LLaMA), so every number is spelled in digits:
a small model can then learn column arithmetic. The special tokens follow the roles the
decode loop needs (mask, end of sequence, padding) and a minimal chat format:

    <|user|>\nQUESTION\n<|assistant|>\nRESPONSE<|eos|>

The tokenizer is saved as an ordinary `tokenizer.json` + `tokenizer_config.json` (with the
chat template) and loads with `PreTrainedTokenizerFast`, like LLaDA's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from d3llm.errors import D3llmError, ModelLoadError

if TYPE_CHECKING:
    from d3llm.tasks import Problem

PAD, EOS, MASK, USER, ASSISTANT, SYSTEM = (
    "<|pad|>", "<|eos|>", "<|mask|>", "<|user|>", "<|assistant|>", "<|system|>",
)
SPECIAL_TOKENS = [PAD, EOS, MASK, USER, ASSISTANT, SYSTEM]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` (an iterable of texts)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        mask_token=MASK,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def check_text(text: object, what: str) -> str:
    """`text` as a Python str of valid Unicode: bytes that were not UTF-8 reach us from argv or a
    terminal as lone surrogates (Python's surrogateescape), which no tokenizer can encode."""
    if not isinstance(text, str):
        raise D3llmError(f"{what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise D3llmError(f"{what} is not valid UTF-8 text (at character {exc.start})") from None
    return text


def quiet_length_warning(tokenizer: PreTrainedTokenizerBase) -> None:
    """transformers warns (once) about ids longer than `model_max_length`; our callers check the
    length themselves and say it in one line with the numbers that matter (prompt +
    max_new_tokens against the model's), so the warning is marked as given."""
    getattr(tokenizer, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a user message in the model's chat format, ready for the response.

    Uses the tokenizer's own chat template, so the same call serves our tiny models, LLaDA
    and Dream."""
    check_text(prompt, "the prompt")
    quiet_length_warning(tokenizer)
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model, without running any remote code.

    `tokenizer.json` (ours, LLaDA) loads as `PreTrainedTokenizerFast`; a vocab.json +
    merges.txt pair (Dream's Qwen2 BPE) loads as transformers' `Qwen2Tokenizer`.
    """
    tokenizer = None
    try:
        if (folder / "tokenizer.json").is_file():
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            from transformers import Qwen2Tokenizer  # only Dream's tokenizer needs it

            tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    except Exception as exc:  # tokenizers raises plain Exceptions on bad files
        raise ModelLoadError(f"{folder}: the tokenizer files could not be read ({exc})") from None
    if tokenizer is None:
        raise ModelLoadError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    check_chat_template(tokenizer, folder)
    return tokenizer


TEMPLATE_SECONDS = 5.0  # a chat template renders in milliseconds; one still running after this loops


def check_chat_template(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Render the model's chat template once on a one-line conversation, in a worker thread with
    a time limit: a template that fails to parse, raises, or loops (10**10 iterations) is a
    one-line `ModelLoadError` when the model loads, not a traceback or a hang later. (A looping
    render cannot be stopped: its daemon thread spins until the process exits.)"""
    if not getattr(tokenizer, "chat_template", None):
        return
    outcome: list = []

    def render() -> None:
        try:
            tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                          tokenize=False)
            outcome.append(None)
        except Exception as exc:  # jinja2's TemplateError and whatever the template raises
            outcome.append(exc)

    worker = threading.Thread(target=render, name="d3llm-chat-template-check", daemon=True)
    worker.start()
    worker.join(TEMPLATE_SECONDS)
    if not outcome:
        raise ModelLoadError(f"{folder}: the chat template did not finish rendering a one-line conversation in "
                             f"{TEMPLATE_SECONDS:g} s (a loop?); fix chat_template")
    if outcome[0] is not None:
        reason = " ".join(str(outcome[0]).split())
        raise ModelLoadError(f"{folder}: the chat template fails ({type(outcome[0]).__name__}: {reason}); "
                             "fix chat_template")


def encode_example(tokenizer: PreTrainedTokenizerBase, problem: Problem, gen_length: int | None) -> dict:
    """A problem as training ids: `{"input_ids": prompt + response, "prompt_len": P, "length": L}`.

    The response is `target + EOS`; with `gen_length` (diffusion families) it is padded with EOS
    up to `gen_length` tokens, as in LLaDA's SFT. Teacher rollouts use it too, to check that a
    target fits the canvas."""
    prompt = prompt_ids(tokenizer, problem.prompt)
    response = tokenizer(problem.target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    if gen_length is not None:
        if len(response) > gen_length:
            raise D3llmError(
                f"a {problem.task} response has {len(response)} tokens, more than `gen_length`={gen_length}"
            )
        response = response + [tokenizer.eos_token_id] * (gen_length - len(response))
    ids = prompt + response
    return {"input_ids": ids, "prompt_len": len(prompt), "length": len(ids)}
