"""The OpenAI-compatible wire format: request bodies (validated) and response bodies.

Requests follow OpenAI's `/v1/completions` and `/v1/chat/completions`, plus d3llm's decode
settings as extra body fields (the `openai` client sends them with `extra_body=`):

    method     decode preset (vanilla, fast-dllm, ..., d3llm, d3llm-cache, ar)
    threshold  the preset's selection threshold (entropy nats or confidence)

Unknown fields are rejected (422) rather than silently ignored; OpenAI fields that clients
commonly send with neutral values (`n`=1, `top_p`=1, zero penalties, `user`) are accepted
only at those values. Types are strict: `true` is not an integer, `"16"` is not a number,
`1` is not a boolean (422). Text must be valid Unicode: a lone surrogate (`"\\ud800"` in
JSON), which no tokenizer can encode, is a 400 naming the field. The ranges of `seed`,
`temperature` and `threshold` are d3llm.decode.config's (400 naming the field), with the method
they apply to.

Usage in every answer: `prompt_tokens`, `completion_tokens` (generated tokens up to and
including the end-of-sequence token, as TPF counts them), `total_tokens`, and a `d3llm`
object: `method`, `nfe` (model forwards this answer took part in until it was final),
`tokens_per_forward`, `batch_size` (rows decoded together) and `seconds` (queue wait included).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from d3llm.serve.scheduler import Finished

Kind = Literal["text", "chat"]  # /v1/completions or /v1/chat/completions
MAX_STOP_STRINGS = 8
# Longest stop string, in characters: each one is searched in the text after every step, so
# long stop strings would hold the event loop (the measurement: docs/files.md, limits). OpenAI's
# stops are short.
MAX_STOP_CHARS = 256
UNICODE_ERROR = "unicode_surrogate"  # the validation error type of text that is not valid Unicode


def _valid_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(UNICODE_ERROR, "must be valid Unicode text: it holds a lone surrogate "
                                                 "(\\ud800-\\udfff), which cannot be encoded") from None
    return text


Text = Annotated[str, AfterValidator(_valid_text)]  # every string a request may carry
STRICT = ConfigDict(extra="forbid", strict=True)  # unknown fields and lax conversions (true -> 1) refused


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False  # a last chunk with `usage` (and no choices) before [DONE]


class DecodeRequest(BaseModel):
    """Fields shared by both endpoints."""

    model_config = STRICT
    model: Text | None = None  # must name the served model when given
    max_tokens: int | None = Field(None, ge=1)  # response canvas (max_new_tokens)
    temperature: float | None = None  # 0 or absent: greedy (range: d3llm.decode.config.DecodeConfig)
    seed: int | None = None  # sampling seed (temperature > 0; range: DecodeConfig)
    stop: Text | list[Text] | None = None  # cut the answer at the first of these strings
    stream: bool = False
    stream_options: StreamOptions | None = None
    method: Text | None = None  # d3llm: decode preset (default: the server's)
    threshold: float | None = None  # d3llm: the preset's selection threshold (range: the preset's)
    # Accepted only at their neutral values: clients send them by default.
    n: int = 1
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: Text | None = None  # informational

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"must be 1 (one answer per request; the server batches concurrent requests), got {n}")
        return n

    @field_validator("top_p")
    @classmethod
    def _no_nucleus(cls, top_p: float | None) -> float | None:
        if top_p not in (None, 1, 1.0):
            raise ValueError(f"must be 1: nucleus sampling is not supported (use `temperature`), got {top_p}")
        return top_p

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value not in (None, 0, 0.0):
            raise ValueError(f"must be 0: penalties are not supported, got {value}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in strings):
            raise ValueError(f"must be at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} "
                             "characters")
        return stop

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(DecodeRequest):
    """/v1/completions: the prompt is continued as it is (no chat template)."""

    # text, token ids, or a list of either (one choice per prompt, as OpenAI and vLLM answer it)
    prompt: Text | list[int] | list[Text] | list[list[int]] = Field(min_length=1)

    def prompts(self) -> list[str | list[int]] | None:
        """The prompts of a list request; None for a single prompt (text or token ids)."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return None
        return list(self.prompt)


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None  # informational

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(DecodeRequest):
    """/v1/chat/completions: the conversation is formatted by the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of `max_tokens`

    def model_post_init(self, context) -> None:
        if self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens


# --- response bodies -----------------------------------------------------------------------

def new_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def finish_reason(result: Finished, stopped_by_string: bool) -> str:
    return "stop" if result.hit_eos or stopped_by_string else "length"


def usage(prompt_tokens: int, result: Finished, method: str) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": result.num_tokens,
        "total_tokens": prompt_tokens + result.num_tokens,
        "d3llm": {"method": method, "nfe": result.forwards, "tokens_per_forward": round(result.tokens_per_forward, 4),
                  "batch_size": result.batch_size, "seconds": round(result.seconds, 4)},
    }


def _envelope(kind: Kind, rid: str, model: str, chunk: bool) -> dict:
    obj = {"chat": "chat.completion", "text": "text_completion"}[kind] + (".chunk" if chunk and kind == "chat" else "")
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model}


def summed_usage(usages: list[dict]) -> dict:
    """One request's usage over several prompts: tokens and forwards summed, TPF of the sums."""
    total = {key: sum(u[key] for u in usages) for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    nfe = sum(u["d3llm"]["nfe"] for u in usages)
    first = usages[0]["d3llm"]
    return {**total, "d3llm": {"method": first["method"], "nfe": nfe,
                               "tokens_per_forward": round(total["completion_tokens"] / max(nfe, 1), 4),
                               "batch_size": max(u["d3llm"]["batch_size"] for u in usages),
                               "seconds": max(u["d3llm"]["seconds"] for u in usages)}}


def response_body(kind: Kind, rid: str, model: str, text: str, reason: str, usage_: dict) -> dict:
    """The whole answer of a non-streamed request."""
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    return {**_envelope(kind, rid, model, chunk=False), "choices": [choice], "usage": usage_}


def chunk_body(kind: Kind, rid: str, model: str, piece: str | None = None, reason: str | None = None,
               first: bool = False) -> dict:
    """One streamed chunk: a text piece, or (piece None) the end with its finish reason."""
    if kind == "chat":
        delta = {"role": "assistant", "content": piece or ""} if first else ({"content": piece} if piece else {})
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
    else:
        choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": reason}
    return {**_envelope(kind, rid, model, chunk=True), "choices": [choice]}


def usage_chunk(kind: Kind, rid: str, model: str, usage_: dict) -> dict:
    """The last chunk when the client asked `stream_options.include_usage`."""
    return {**_envelope(kind, rid, model, chunk=True), "choices": [], "usage": usage_}


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
