"""A conversation with a model, answered through the serving scheduler (`d3llm chat`).

    with ChatSession(load_model("tiny-teacher")) as chat:
        for piece in chat.ask("Tom has 3 apples. ..."):
            print(piece, end="", flush=True)
        chat.last.forwards, chat.last.tokens_per_forward, chat.last.seconds

Answers stream exactly as the HTTP server streams them (final text only), because they go
through the same scheduler, settings checks and `TextStream`. The conversation so far is the
prompt of the next answer (`history=True`; single-turn models, the bundled ones, answer each message
on its own); `reset()` starts over. Ctrl-C while answering cancels that answer, not the chat.

`repl(session)` is the terminal loop of `d3llm chat`: answers on stdout, statistics, errors and
what the `/commands` say on stderr (so `d3llm chat < questions > answers` keeps only answers);
on a terminal, line editing and history come from the standard library's `readline`.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from d3llm.errors import D3llmError
from d3llm.models import LoadedModel
from d3llm.models.catalog import bundled_models
from d3llm.models.tokenizer import check_text
from d3llm.serve.scheduler import Failed, Finished, Job, Scheduler
from d3llm.serve.service import Limits, ModelService
from d3llm.serve.text import TextStream, chat_prompt_ids


class ChatSession:
    """One conversation; use it as a context manager (it runs the scheduler's worker thread)."""

    def __init__(self, lm: LoadedModel, method: str | None = None, max_tokens: int = 128,
                 history: bool | None = None, **settings):
        # history None: keep the conversation unless the model is single-turn (the bundled ones:
        # trained on one question per sequence, a second turn only confuses them)
        self.multi_turn = history if history is not None else not single_turn(lm)
        self.scheduler = Scheduler(lm.model, lm.tokenizer.pad_token_id, max_batch=1, max_wait_ms=0)
        self.service = ModelService(lm, self.scheduler, method, Limits(None, max_tokens, max_tokens), lm.name)
        self.config = self.service.decode_config(max_tokens=max_tokens, settings=settings)  # checked as a request's
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
        check_text(message, "the message")  # bytes that were not UTF-8 arrive as lone surrogates
        turn = [*(self.history if self.multi_turn else []), {"role": "user", "content": message}]
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


def single_turn(lm: LoadedModel) -> bool:
    """The bundled models answer one question per sequence (their tasks); others may chat."""
    bundled = bundled_models()
    return lm.name in bundled and lm.path.resolve() == bundled[lm.name].resolve()


def banner(session: ChatSession) -> str:
    turns = ("multi-turn: each message is sent with the conversation so far, /reset starts over"
             if session.multi_turn else "single-turn: each message is answered on its own, --history keeps them")
    return (f"chat with {session.service.model_id} ({session.config.method}), {turns}. "
            "/help lists commands; Ctrl-C cancels an answer; Ctrl-D or /exit quits.")


# The REPL's commands (a line starting with "/" and a letter); anything else is a message.
COMMANDS = {
    "/help": "list these commands",
    "/reset": "forget the conversation and start a new one",
    "/exit": "quit (also /quit, or end of input: Ctrl-D)",
}
ALIASES = {"/quit": "/exit"}


def terminal_reader(stdin: TextIO | None = None) -> Callable[[str], str]:
    """`read(prompt)` for `repl`: on a terminal, `input` with `readline`'s line editing and
    history (arrow keys, Ctrl-R); otherwise plain lines, no prompt. EOFError at the end."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        try:
            import readline  # noqa: F401  (importing it gives `input` line editing and history)
        except ImportError:  # not on every platform (Windows); plain input then
            pass
        return input

    def read(_prompt: str) -> str:
        line = stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read


def _help() -> str:
    lines = ["commands:", *(f"  {name:<7} {what}" for name, what in COMMANDS.items()),
             "anything else is sent to the model; start a message with // to send one that begins with /"]
    return "\n".join(lines)


def repl(session: ChatSession, read: Callable[[str], str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> None:
    """Read messages and commands until /exit or end of input; stream each answer to `out`,
    then its NFE, TPF and tokens/s to `err`. `read(prompt)` returns a line (EOFError at the
    end); default: `terminal_reader()`."""
    read = read or terminal_reader()
    out, err = out or sys.stdout, err or sys.stderr
    while True:
        try:
            line = read("> ").strip()
        except EOFError:
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line, as shells do
            print("", file=err)
            continue
        if not line:
            continue
        if line.startswith("/") and len(line) > 1 and line[1].isalpha():
            command = ALIASES.get(line.split()[0].lower(), line.split()[0].lower())
            if command == "/exit":
                return
            if command == "/reset":
                session.reset()
                print("conversation reset: the next message starts a new one", file=err, flush=True)
            elif command == "/help":
                print(_help(), file=err, flush=True)
            else:
                print(f"unknown command {line.split()[0]}; /help lists the commands "
                      "(start a message with // to send it as text)", file=err, flush=True)
            continue
        if line.startswith("//"):
            line = line[1:]
        try:
            for piece in session.ask(line):
                out.write(piece)
                out.flush()
        except D3llmError as exc:  # e.g. the conversation outgrew the model: say so, keep going
            print(f"error: {exc} (/reset starts over)", file=err, flush=True)
            continue
        except KeyboardInterrupt:  # Ctrl-C while answering: drop this answer (not kept), keep the chat
            print("", file=out, flush=True)
            print("answer cancelled", file=err, flush=True)
            continue
        last = session.last
        print("", file=out, flush=True)
        print(f"[{session.config.method}] nfe={last.forwards} tpf={last.tokens_per_forward:.2f} "
              f"tokens/s={last.num_tokens / max(last.seconds, 1e-9):.1f}", file=err, flush=True)
