"""A conversation with a model, answered through the serving scheduler (`d3llm chat`).

    with ChatSession(load_model("tiny-teacher")) as chat:
        for piece in chat.ask("Tom has 3 apples. ..."):
            print(piece, end="", flush=True)
        chat.last.forwards, chat.last.tokens_per_forward, chat.last.seconds

Answers stream exactly as the HTTP server streams them (final text only), because they go
through the same scheduler, settings checks and `TextStream`. The conversation so far is the
prompt of the next answer; `reset()` starts over.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator

from d3llm.errors import D3llmError
from d3llm.models import LoadedModel
from d3llm.serve.scheduler import Failed, Finished, Job, Scheduler
from d3llm.serve.service import Limits, ModelService
from d3llm.serve.text import TextStream, chat_prompt_ids


class ChatSession:
    """One conversation; use it as a context manager (it runs the scheduler's worker thread)."""

    def __init__(self, lm: LoadedModel, method: str | None = None, max_tokens: int = 128, **settings):
        self.scheduler = Scheduler(lm.model, lm.tokenizer.pad_token_id, max_batch=1, max_wait_ms=0)
        self.service = ModelService(lm, self.scheduler, method, Limits(None, max_tokens, max_tokens), lm.name)
        self.config = self.service.decode_config(max_tokens=max_tokens).override(**settings)
        self.history: list[dict[str, str]] = []  # {"role", "content"} in order
        self.last: Finished | None = None  # the statistics of the latest answer

    def __enter__(self) -> "ChatSession":
        self.scheduler.start()
        return self

    def __exit__(self, *_) -> None:
        self.scheduler.close()

    def reset(self) -> None:
        self.history.clear()

    def ask(self, message: str) -> Iterator[str]:
        """Pieces of the answer to `message` as they become final; then the exchange joins the
        history and `last` holds its statistics."""
        if not message.strip():
            raise D3llmError("the message is empty")
        turn = [*self.history, {"role": "user", "content": message}]
        ids = chat_prompt_ids(self.service.lm.tokenizer, turn)
        self.service.check_prompt(ids, self.config)
        events: queue.Queue = queue.Queue()
        job = Job(ids, self.config, events.put)
        self.scheduler.submit(job)
        text = TextStream(self.service.lm.tokenizer)
        try:
            while True:
                event = events.get()
                if isinstance(event, Failed):
                    raise D3llmError(event.message)
                if piece := text.release(event):
                    yield piece
                if isinstance(event, Finished):
                    break
        finally:
            self.scheduler.cancel(job)
        self.last = event
        self.history = [*turn, {"role": "assistant", "content": text.text}]
