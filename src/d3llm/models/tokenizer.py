"""The tokenizer of the bundled tiny models: a byte-level BPE with one token per digit.

Digits are split one by one before BPE (as in LLaMA), so every number is spelled in digits:
a small model can then learn column arithmetic. The special tokens follow the roles the
decode loop needs (mask, end of sequence, padding) and a minimal chat format:

    <|user|>\nQUESTION\n<|assistant|>\nRESPONSE<|eos|>

The tokenizer is saved as an ordinary `tokenizer.json` + `tokenizer_config.json` (with the
chat template) and loads with `PreTrainedTokenizerFast`, like LLaDA's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

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


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a user message in the model's chat format, ready for the response.

    Uses the tokenizer's own chat template, so the same call serves our tiny models, LLaDA
    and Dream."""
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)
