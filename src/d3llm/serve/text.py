"""From token ids to the text a client is sent: chat prompts in, stop-string-cut pieces out.

`TextStream` turns the growing final prefixes that the scheduler delivers into text pieces
that are never taken back: it cuts the text at the first stop string, holds back a tail that
could still become a stop string, and holds back an incomplete UTF-8 character (byte-level
BPE decodes half a character as U+FFFD). Streamed and non-streamed answers both go through
it, so the pieces of a stream always join to the non-streamed text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from d3llm.serve.errors import BadRequest
from d3llm.serve.scheduler import Finished, Partial

REPLACEMENT_CHARACTER = "\ufffd"
ROLES = ("system", "user", "assistant")


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of a conversation in the model's chat template, ready for the next answer.

    `messages` are `{"role": "system" | "user" | "assistant", "content": str}`; the last
    must not be the assistant's (the model writes that). A conversation the template refuses
    (say, roles that do not alternate) is a `BadRequest` naming `messages`."""
    if not messages:
        raise BadRequest("`messages` must hold at least one message", "messages")
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise BadRequest(f"`messages[{i}].role` must be one of {', '.join(ROLES)}, got {message['role']!r}",
                             f"messages[{i}].role")
    if messages[-1]["role"] == "assistant":
        raise BadRequest("the last message must be the user's or the system's, not the assistant's",
                         f"messages[{len(messages) - 1}].role")
    try:
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    except TemplateError as exc:  # templates raise on conversations they do not support
        raise BadRequest(f"the model's chat template refuses these messages: {exc}", "messages") from None
    if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


class TextStream:
    """Final text of one answer, released piece by piece and cut at the first stop string."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.text = ""  # everything released so far
        self.stopped = False  # a stop string was found: nothing more will be released

    def release(self, event: Partial | Finished) -> str:
        """The piece a scheduler event makes final: a longer prefix, or the whole answer."""
        return self.finish(event.ids) if isinstance(event, Finished) else self.update(event.ids)

    def update(self, ids: list[int]) -> str:
        """The new piece that `ids` (a longer final prefix) makes safe to send ("" if none)."""
        return self._release(ids, final=False)

    def finish(self, ids: list[int]) -> str:
        """The last piece, once `ids` is the whole answer."""
        return self._release(ids, final=True)

    def _release(self, ids: list[int], final: bool) -> str:
        if self.stopped:
            return ""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        elif not final:
            text = text[: len(text) - self._unsafe_tail(text)]
        if not text.startswith(self.text):  # a tokenizer that rewrote released text (not byte-level
            return ""                        # BPE): release nothing rather than contradict it
        piece, self.text = text[len(self.text):], text
        return piece

    def _unsafe_tail(self, text: str) -> int:
        """Characters at the end of `text` that may still change: a partial character, or the
        longest tail that is the start of a stop string."""
        partial = len(text) - len(text.rstrip(REPLACEMENT_CHARACTER))
        prefix = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return max(partial, prefix)
