"""Dynamic batching: concurrent requests in, batched calls of the one decode loop out.

The scheduler knows token ids, not text or HTTP. A caller submits a `Job` (prompt ids, a
`DecodeConfig`, and a `deliver` callback); one worker thread runs the model and calls
`deliver` with events, in order:

    Partial(ids)*  then exactly one of  Finished(...) | Failed(message)

`Partial.ids` is the response prefix that is final so far (committed, contiguous, before the
first EOS): a streaming client may be sent its text. `deliver` runs on the worker thread, so
it must be quick and thread-safe (the HTTP app hands events to its asyncio loop with
`call_soon_threadsafe`; `d3llm chat` puts them on a `queue.Queue`).

Batching rules:

- Rows of one batch share one `DecodeConfig` (the loop decodes a batch with one config), so a
  batch holds jobs of the oldest waiting job's config; jobs of other configs wait their turn.
  Greedy jobs are normalised by the caller so that an unused seed does not split batches.
- A batch starts when it holds `max_batch` jobs or when its oldest job has waited
  `max_wait_ms`. Under load the worker finds jobs that have waited longer than that while it
  was busy, so the wait only adds latency to an idle server.
- A row whose answer is final (its final prefix reaches its EOS, or fills the canvas) is
  delivered at once, from the streaming callback, not when the batch ends, and then leaves
  the batch (the callback tells the loop so), as does a row whose client is gone; the batch
  ends when no row is left. So a long row delays other rows' delivery by nothing, and the
  only cost of sharing a batch is that each forward computes the rows still wanted. Rows
  cannot join a running batch (continuous batching would need the loop to admit rows
  mid-decode).
- Autoregressive models stream the same way: their decode path calls the same callback after
  every token.
- `cancel(job)` removes a waiting job (freeing its queue slot) or marks a running row so that
  nothing more is delivered for it; the row leaves the batch at the next iteration.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from d3llm.decode import DecodeConfig, final_prefix_lengths, generate
from d3llm.decode.state import DecodeState
from d3llm.errors import D3llmError
from d3llm.models import DiffusionLM

log = logging.getLogger(__name__)


@dataclass
class Partial:
    ids: list[int]  # the response prefix that is final so far (no EOS)


@dataclass
class Finished:
    ids: list[int]  # the whole response, before the first EOS
    num_tokens: int  # generated tokens, up to and including the first EOS (as TPF counts them)
    forwards: int  # model forwards this row took part in until its answer was final
    hit_eos: bool  # False: the answer filled `max_new_tokens` without an EOS
    batch_size: int  # rows decoded together with this one (itself included)
    seconds: float  # from submission to delivery (queue wait included)

    @property
    def tokens_per_forward(self) -> float:
        return self.num_tokens / max(self.forwards, 1)


@dataclass
class Failed:
    message: str  # why the batch this job was in could not be decoded


Event = Partial | Finished | Failed


@dataclass(eq=False)  # identity semantics: jobs are compared and removed by identity
class Job:
    prompt: list[int]  # token ids, already chat-formatted
    config: DecodeConfig
    deliver: Callable[[Event], None]  # called on the worker thread
    submitted_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set by `Scheduler.cancel`; read by the worker


class QueueFull(D3llmError):
    """The scheduler holds `max_queue` waiting jobs (or is shutting down); retry later."""


class Scheduler:
    """One worker thread that gathers waiting jobs into batches and decodes them."""

    def __init__(self, model: DiffusionLM, pad_token_id: int, max_batch: int = 8, max_wait_ms: float = 10.0,
                 max_queue: int = 256):
        if max_batch < 1:
            raise D3llmError(f"`max_batch` must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise D3llmError(f"`max_wait_ms` must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise D3llmError(f"`max_queue` must be >= 1, got {max_queue}")
        self.model, self.pad_token_id = model, pad_token_id
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)  # recent batches
        self._waiting: list[Job] = []
        self._running: list[Job] = []
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- the caller's side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="d3llm-scheduler", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`; `QueueFull` when `max_queue` jobs already wait or the scheduler is closed."""
        with self._wakeup:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self._waiting)} requests are waiting "
                                f"(max_queue={self.max_queue}); retry later")
            self._waiting.append(job)
            self._wakeup.notify()

    def cancel(self, job: Job) -> None:
        """Forget `job`: a waiting job leaves the queue; a running row delivers nothing more."""
        with self._wakeup:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
            self._wakeup.notify()

    def load(self) -> dict[str, int]:
        """Jobs waiting and running now, and batches decoded so far."""
        with self._wakeup:
            return {"waiting": len(self._waiting), "running": len(self._running), "batches": len(self.batch_sizes)}

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, fail the waiting ones, and let the running batch finish."""
        with self._wakeup:
            self._closed = True
            waiting, self._waiting = self._waiting, []
            self._wakeup.notify()
        for job in waiting:
            _deliver(job, Failed("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the worker's side ---------------------------------------------------------------

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self.batch_sizes.append(len(batch))
            try:
                self._decode(batch)
            finally:
                with self._wakeup:
                    self._running = []

    def _next_batch(self) -> list[Job] | None:
        """Block until a batch is due (see the module header); None once closed."""
        with self._wakeup:
            while not self._closed:
                if not self._waiting:
                    self._wakeup.wait()
                    continue
                oldest = self._waiting[0]
                same = [job for job in self._waiting if job.config == oldest.config][: self.max_batch]
                wait = oldest.submitted_at + self.max_wait - time.monotonic()
                if len(same) < self.max_batch and wait > 0:
                    self._wakeup.wait(wait)  # new jobs, cancellations and closing wake us early
                    continue
                self._waiting = [job for job in self._waiting if job not in same]
                self._running = same
                return same
            return None

    def _decode(self, batch: list[Job]) -> None:
        """Run the decode loop on `batch`; deliver every row that was not delivered early."""
        config = batch[0].config
        rows = _Rows(batch, self.model.facts.eos_token_id)
        try:
            out = generate(self.model, [job.prompt for job in batch], config, self.pad_token_id,
                           on_step=rows.on_step)
        except Exception as exc:  # a bad batch must fail its requests, not the server
            log.exception("decoding a batch of %d failed", len(batch))
            rows.fail(f"decoding failed: {exc}")
            return
        for row in rows.undelivered():
            hit_eos = out.num_tokens[row] > len(out.sequences[row])
            rows.finish(row, out.sequences[row], out.num_tokens[row], out.row_forwards[row], hit_eos)


class _Rows:
    """Delivery bookkeeping of one running batch: what each row has been sent."""

    def __init__(self, batch: list[Job], eos_id: int):
        self.batch, self.eos_id = batch, eos_id
        self.sent = torch.zeros(len(batch), dtype=torch.long)  # (B,) final tokens already delivered
        self.done = torch.zeros(len(batch), dtype=torch.bool)  # (B,) Finished/Failed delivered

    def on_step(self, state: DecodeState) -> torch.Tensor:
        """After each iteration: send grown final prefixes; finish rows whose answer is final.
        `state` holds the unfinished rows; `state.rows` maps them to rows of `self.batch`.
        Returns the rows with nothing left to deliver: the loop stops decoding them."""
        self.done |= torch.tensor([job.cancelled for job in self.batch])
        rows = state.rows.cpu()
        final = final_prefix_lengths(state).cpu()  # (b,) for the rows in `state`
        grown = (final > self.sent[rows]) & ~self.done[rows]
        forwards = state.row_forwards.cpu()
        for i in grown.nonzero().flatten().tolist():  # only rows with news: each has its own client
            row, n = int(rows[i]), int(final[i])
            ids = state.response[i, :n].tolist()
            if ids[-1] == self.eos_id or n == state.num_new:
                hit_eos = ids[-1] == self.eos_id
                self.finish(row, ids[:-1] if hit_eos else ids, n, int(forwards[i]), hit_eos)
            else:
                _deliver(self.batch[row], Partial(ids))
            self.sent[row] = n
        return self.done[rows].to(state.rows.device)

    def finish(self, row: int, ids: list[int], num_tokens: int, forwards: int, hit_eos: bool) -> None:
        job = self.batch[row]
        self.done[row] = True
        seconds = time.monotonic() - job.submitted_at
        _deliver(job, Finished(ids, num_tokens, forwards, hit_eos, len(self.batch), seconds))

    def fail(self, message: str) -> None:
        for row in self.undelivered():
            self.done[row] = True
            _deliver(self.batch[row], Failed(message))

    def undelivered(self) -> list[int]:
        return (~self.done).nonzero().flatten().tolist()


def _deliver(job: Job, event: Event) -> None:
    """Hand `event` to a job that still listens; a failing consumer must not stop the batch."""
    if job.cancelled:
        return
    try:
        job.deliver(event)
    except Exception:
        log.exception("delivering an event failed; the request is dropped")
        job.cancelled = True
