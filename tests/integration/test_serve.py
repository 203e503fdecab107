"""The OpenAI-compatible server and `d3llm chat`, driven through the official `openai` client.

Servers run in a background thread on a free loopback port, over a toy LLaDA-style model
(random weights: the answers are gibberish, but deterministic under greedy decoding, which
is what these tests compare).
"""

import dataclasses
import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from d3llm import load_model
from d3llm.decode import generate, preset
from d3llm.models import DiffusionLM
from d3llm.serve import background_server, create_app
from d3llm.serve import scheduler as scheduler_module
from d3llm.serve.scheduler import Failed, Finished, Job, Partial, Scheduler
from d3llm.serve.text import TextStream, chat_prompt_ids
from tests.conftest import run_cli

KEY = "test-key"
QUESTION = "Tom has 3 apples. Tom buys 2 more apples. How many apples does Tom have now?"


@pytest.fixture(scope="module")
def server(lm):
    """One server for most tests: a key, batches of up to 8 gathered for up to 200 ms."""
    app = create_app(lm, api_key=KEY, max_batch=8, max_wait_ms=200, max_tokens_limit=64, max_prompt_tokens=120)
    with background_server(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key=KEY, max_retries=0, timeout=60)


def direct_answer(lm, messages, method, max_new_tokens):
    """The answer of the decode loop itself, without the server."""
    ids = chat_prompt_ids(lm.tokenizer, messages)
    out = generate(lm.model, [ids], preset(method, max_new_tokens=max_new_tokens), lm.tokenizer.pad_token_id)
    return lm.tokenizer.decode(out.sequences[0], skip_special_tokens=True)


def test_completion(client, lm):
    answer = client.completions.create(model="toy-llada", prompt=QUESTION, max_tokens=16,
                                       extra_body={"threshold": 0.4})
    assert isinstance(answer.choices[0].text, str) and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens == len(lm.tokenizer.encode(QUESTION))
    assert 1 <= answer.usage.completion_tokens <= 16
    stats = answer.usage.model_extra["d3llm"]
    assert stats["method"] == "d3llm" and stats["nfe"] >= 1  # the server's default for a dLLM
    assert stats["tokens_per_forward"] == pytest.approx(answer.usage.completion_tokens / stats["nfe"], rel=1e-3)


def test_sampling_is_reproducible_with_a_seed(client):
    settings = dict(model="toy-llada", prompt=QUESTION, max_tokens=16, temperature=1.5,
                    extra_body={"method": "vanilla"})
    first, again = (client.completions.create(**settings, seed=7).choices[0].text for _ in range(2))
    greedy = client.completions.create(**{**settings, "temperature": 0}).choices[0].text
    assert first == again != greedy


@pytest.mark.parametrize("method", ["vanilla", "d3llm", "fast-dllm"])
def test_chat_streamed_and_whole_agree_with_the_decode_loop(client, lm, method):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    settings = dict(model="toy-llada", messages=messages, max_tokens=40, extra_body={"method": method})
    whole = client.chat.completions.create(**settings)
    chunks = list(client.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert whole.choices[0].message.content == direct_answer(lm, messages, method, 40)
    assert "".join(pieces) == whole.choices[0].message.content
    if method == "vanilla":  # one token per forward: the text arrives in many pieces
        assert len(pieces) > 3
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_cut_whole_and_streamed_answers(client, lm):
    messages = [{"role": "user", "content": QUESTION}]
    full = direct_answer(lm, messages, "vanilla", 32)
    stop = full[4:6]  # a string that occurs in the answer
    settings = dict(model="toy-llada", messages=messages, max_tokens=32, stop=[stop, "never here"],
                    extra_body={"method": "vanilla"})
    whole = client.chat.completions.create(**settings)
    streamed = client.chat.completions.create(**settings, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert whole.choices[0].message.content == full[: full.find(stop)]
    assert whole.choices[0].finish_reason == "stop"
    assert "".join(pieces) == whole.choices[0].message.content


def test_text_stream_never_releases_a_stop_string(lm):
    ids = lm.tokenizer.encode("12 apples and 3 pears.")
    stream = TextStream(lm.tokenizer, stop=["3 p"])
    released = "".join(stream.update(ids[:k]) for k in range(1, len(ids) + 1)) + stream.finish(ids)
    assert released == "12 apples and " and stream.stopped


def test_api_key_is_required(server, lm):
    app, url = server
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        wrong.chat.completions.create(model="toy-llada", messages=[{"role": "user", "content": "hi"}])
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # probes need no key


def test_bad_requests_get_a_message(client, server):
    url = server[1]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    broken = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers=headers)
    assert broken.status_code == 422 and "malformed request" in broken.json()["error"]["message"]
    cases = [
        (openai.UnprocessableEntityError, "max_tokens: Input should be greater than or equal to 1", {"max_tokens": 0}),
        (openai.UnprocessableEntityError, "logprobs: Extra inputs are not permitted", {"logprobs": True}),
        (openai.UnprocessableEntityError, "n: Value error, must be 1", {"n": 2}),
        (openai.BadRequestError, "unknown method 'turbo'", {"extra_body": {"method": "turbo"}}),
        (openai.BadRequestError, "`method` 'ar' cannot decode a diffusion model", {"extra_body": {"method": "ar"}}),
        (openai.BadRequestError, "`threshold` has no effect with method 'vanilla'",
         {"extra_body": {"method": "vanilla", "threshold": 0.3}}),
        (openai.BadRequestError, "`max_tokens` must be <= 64 on this server, got 65", {"max_tokens": 65}),
        (openai.NotFoundError, "this server serves 'toy-llada'", {"model": "gpt-4"}),
    ]
    for error, message, extra in cases:
        settings = {"model": "toy-llada", "messages": [{"role": "user", "content": "hi"}], **extra}
        with pytest.raises(error, match=message):
            client.chat.completions.create(**settings)
    prompts = [([5] * 121, 8, r"the prompt has 121 tokens; this server accepts at most 120 \(max_prompt_tokens\)"),
               ([5] * 100, 64, r"prompt \(100 tokens\) \+ `max_tokens` \(64\) exceeds the model's maximum length 160"),
               ([5, 10**6], 8, r"token ids must be in \[0, ")]
    for prompt, max_tokens, message in prompts:  # prompts as token ids: exact lengths
        with pytest.raises(openai.BadRequestError, match=message):
            client.completions.create(model="toy-llada", prompt=prompt, max_tokens=max_tokens)


def test_concurrent_requests_are_batched(client, server, lm):
    scheduler = server[0].state.scheduler
    before = len(scheduler.batch_sizes)
    questions = [f"Mia has {n} apples. How many apples does Mia have?" for n in range(8)]

    def ask(question):
        return client.chat.completions.create(model="toy-llada", messages=[{"role": "user", "content": question}],
                                              max_tokens=24, extra_body={"method": "vanilla"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, questions))
    assert max(list(scheduler.batch_sizes)[before:]) > 1
    assert max(a.usage.model_extra["d3llm"]["batch_size"] for a in answers) > 1
    for question, answer in zip(questions, answers):  # batching changes nothing in a greedy answer
        assert answer.choices[0].message.content == direct_answer(lm, [{"role": "user", "content": question}],
                                                                   "vanilla", 24)


def test_full_queue_is_refused_and_a_gone_client_frees_its_slot(lm):
    """One waiting request fills the queue (max_queue=1; it waits an hour for company); the next
    gets 503; when the first client disconnects its slot is free again."""
    app = create_app(lm, max_batch=8, max_wait_ms=3_600_000, max_queue=1)
    with background_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
        with httpx.Client(timeout=30) as http, http.stream("POST", f"{url}/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            wait_until(lambda: httpx.get(f"{url}/health").json()["waiting"] == 1)
            with pytest.raises(openai.InternalServerError, match="max_queue=1") as refused:
                client.chat.completions.create(model="toy-llada", messages=[{"role": "user", "content": "hi"}])
            assert refused.value.status_code == 503
        wait_until(lambda: httpx.get(f"{url}/health").json()["waiting"] == 0)  # the client left
        assert not app.state.scheduler.batch_sizes  # it left before its batch was due
        app.state.scheduler.max_wait = 0  # the next request need not wait for company
        answer = client.chat.completions.create(model="toy-llada", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=8)
        assert answer.usage.completion_tokens >= 1


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_bundled_ar_model_streams_the_same_answer():
    import d3llm

    lm = load_model("tiny-ar")
    with background_server(create_app(lm)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        settings = dict(model="tiny-ar", messages=[{"role": "user", "content": QUESTION}], max_tokens=48)
        whole = client.chat.completions.create(**settings)
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(**settings, stream=True)
                  if c.choices]
    assert whole.choices[0].message.content == d3llm.generate(lm, QUESTION, max_new_tokens=48).texts[0]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len([piece for piece in pieces if piece]) > 1  # sent as it is generated, not at the end
    assert whole.usage.model_extra["d3llm"]["method"] == "ar"


def test_chat_command_streams_answers_and_stats(monkeypatch, capsys, model_dir, lm):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n/reset\nhi\n/exit\nnever read\n"))
    code, out, err = run_cli(monkeypatch, capsys, "chat", "--model", model_dir, "--method", "vanilla",
                             "--max-new-tokens", 16)
    assert code in (0, None), err
    first = direct_answer(lm, [{"role": "user", "content": QUESTION}], "vanilla", 16)
    second = direct_answer(lm, [{"role": "user", "content": "hi"}], "vanilla", 16)  # after /reset
    assert out == f"{first}\n{second}\n"
    assert err.count("[vanilla] nfe=16 tpf=1.00 tokens/s=") == 2


def scripted(*lines):
    """A `read(prompt)` for `repl` that returns `lines`, then signals the end of input."""
    queue = list(lines)

    def read(prompt):
        if not queue:
            raise EOFError
        return queue.pop(0)

    return read


def test_chat_repl_commands_are_not_sent_to_the_model(lm):
    from d3llm.serve.chat import ChatSession, repl

    out, err = io.StringIO(), io.StringIO()
    with ChatSession(lm, "vanilla", 16) as session:
        asked, ask = [], session.ask

        def recorded(message):
            asked.append(message)
            yield from ask(message)

        session.ask = recorded
        repl(session, scripted("/help", QUESTION, "/reset", "/frobnicate now", "//slash text", "  ", "/quit", "hi"),
             out, err)
        assert asked == [QUESTION, "/slash text"]  # no /command reached the model; "//" escapes a leading /
        assert session.history[0]["content"] == "/slash text"  # /reset emptied the conversation before it
    shown = err.getvalue()
    for command in ("/help", "/reset", "/exit"):
        assert command in shown.split("unknown command")[0]  # /help lists every command
    assert "conversation reset" in shown
    assert "unknown command /frobnicate; /help lists the commands" in shown
    first = direct_answer(lm, [{"role": "user", "content": QUESTION}], "vanilla", 16)
    assert out.getvalue().startswith(f"{first}\n") and out.getvalue().count("\n") == 2  # answers only
    assert shown.count("[vanilla] nfe=") == 2


def test_chat_reads_with_readline_on_a_terminal(monkeypatch):
    from d3llm.serve import chat

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delitem(sys.modules, "readline", raising=False)
    assert chat.terminal_reader(Terminal()) is input and "readline" in sys.modules  # line editing, history
    read = chat.terminal_reader(io.StringIO("one\ntwo\n"))  # a pipe: plain lines, no prompt
    assert [read("> "), read("> ")] == ["one", "two"]
    with pytest.raises(EOFError):
        read("> ")



class Listener:
    """A job's consumer: records its events; with `leave`, cancels the job at the first one."""

    def __init__(self, scheduler, lm, config, leave=False, question=QUESTION):
        self.scheduler, self.events, self.leave = scheduler, [], leave
        self.job = Job(chat_prompt_ids(lm.tokenizer, [{"role": "user", "content": question}]), config, self.deliver)

    def deliver(self, event):
        self.events.append(event)
        if self.leave:
            self.scheduler.cancel(self.job)


def decode_jobs(scheduler, listeners):
    """Submit the listeners' jobs together and wait until their batch is over."""
    done = len(scheduler.batch_sizes)
    for listener in listeners:
        scheduler.submit(listener.job)
    wait_until(lambda: len(scheduler.batch_sizes) > done and scheduler.load()["running"] == 0)


@pytest.fixture
def scheduler(lm):
    scheduler = Scheduler(lm.model, lm.tokenizer.pad_token_id, max_batch=8, max_wait_ms=50)
    scheduler.start()
    yield scheduler
    scheduler.close()


@pytest.fixture
def forwards(monkeypatch):
    """(iteration, rows forwarded) of every decode the scheduler runs, recorded via `on_step`."""
    steps = []
    real_generate = scheduler_module.generate

    def counting_generate(model, prompts, config, pad_token_id, on_step=None):
        def counted(state):
            steps.append((state.step, len(state.rows)))
            return on_step(state)

        return real_generate(model, prompts, config, pad_token_id, on_step=counted)

    monkeypatch.setattr(scheduler_module, "generate", counting_generate)
    return steps


def test_a_batch_whose_clients_all_left_stops(lm, scheduler, forwards):
    listeners = [Listener(scheduler, lm, preset("vanilla", max_new_tokens=32), leave=True) for _ in range(2)]
    decode_jobs(scheduler, listeners)
    assert list(scheduler.batch_sizes) == [2]
    assert [[type(e) for e in listener.events] for listener in listeners] == [[Partial], [Partial]]
    assert len(forwards) < 32  # stopped long before the 32 iterations of a whole vanilla decode


def test_a_failing_batch_fails_its_requests_and_the_scheduler_goes_on(monkeypatch, lm, scheduler):
    real_generate = scheduler_module.generate
    monkeypatch.setattr(scheduler_module, "generate", lambda *args, **kwargs: 1 / 0)
    failed = [Listener(scheduler, lm, preset("vanilla", max_new_tokens=8)) for _ in range(2)]
    decode_jobs(scheduler, failed)
    assert [listener.events for listener in failed] == [[Failed("decoding failed: division by zero")]] * 2
    monkeypatch.setattr(scheduler_module, "generate", real_generate)
    served = Listener(scheduler, lm, preset("vanilla", max_new_tokens=8))
    decode_jobs(scheduler, [served])
    assert isinstance(served.events[-1], Finished) and served.events[-1].num_tokens == 8


def test_a_finished_row_is_delivered_before_its_batch_ends(lm, forwards):
    """With the token at response position 2 as EOS, QUESTION's answer is final as soon as
    positions 0-2 are committed; vanilla decoding would go on filling its canvas (no early
    stop), but the answer is delivered at that iteration and the row leaves the batch, while
    the other row still decodes."""
    config = preset("vanilla", max_new_tokens=32)
    ids = chat_prompt_ids(lm.tokenizer, [{"role": "user", "content": QUESTION}])
    plain = generate(lm.model, [ids], config, lm.tokenizer.pad_token_id)
    eos = plain.sequences[0][2]
    first_eos = plain.sequences[0].index(eos)
    final_at = int(plain.trace[0, : first_eos + 1].max()) + 1  # forwards until positions 0..first_eos are set
    model = DiffusionLM(lm.model.net, dataclasses.replace(lm.model.facts, eos_token_id=eos))
    scheduler = Scheduler(model, lm.tokenizer.pad_token_id, max_batch=8, max_wait_ms=50)
    scheduler.start()
    early, other = Listener(scheduler, lm, config), Listener(scheduler, lm, config, question="hi")
    decode_jobs(scheduler, [early, other])
    scheduler.close()
    assert list(scheduler.batch_sizes) == [2]
    assert early.events[-1] == Finished(plain.sequences[0][:first_eos], first_eos + 1, final_at, True, 2,
                                        early.events[-1].seconds)
    assert final_at < 32 and isinstance(other.events[-1], Finished)
    assert all(rows == (2 if step <= final_at else 1) for step, rows in forwards)
    assert len(forwards) > final_at  # the other row went on alone


def test_serve_command_answers_and_stops_gracefully_on_ctrl_c(model_dir):
    with socket.socket() as probe:  # a free loopback port for the subprocess
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "d3llm.cli", "serve", "--model", str(model_dir), "--port", str(port),
               "--api-key", KEY, "--method", "vanilla"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_until(lambda: proc.poll() is None and _healthy(port), seconds=90)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        answer = client.chat.completions.create(model="toy-llada", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=8)
        assert answer.usage.model_extra["d3llm"] | {"seconds": 0} == {
            "method": "vanilla", "nfe": 8, "tokens_per_forward": 1.0, "batch_size": 1, "seconds": 0}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Application shutdown complete" in err and "Traceback" not in err, err


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
