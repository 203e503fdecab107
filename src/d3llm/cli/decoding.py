"""The commands that decode for a person or a client: `d3llm generate` (one prompt), `d3llm chat`
(a terminal conversation) and `d3llm serve` (an OpenAI-compatible HTTP API)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from d3llm.cli.common import (BLOCK_SIZE_HELP, CANVAS_HELP, METHOD_HELP, MODEL_HELP, SET_HELP, TEMPERATURE_HELP,
                              THRESHOLD_HELP, Device, Dtype, decode_config, fail, load, placement)
from d3llm.errors import D3llmError


def _prompt_text(prompt: str) -> str:
    """PROMPT, or standard input for `-` (as `cat`, `llm` and `ollama run` read it)."""
    from_stdin = prompt == "-"
    if from_stdin:
        if sys.stdin.isatty():
            typer.echo("reading the prompt from standard input (end with Ctrl-D)", err=True)
        prompt = sys.stdin.read().rstrip("\n")
    if not prompt.strip():
        fail("the prompt is empty" + (" (standard input held no text)" if from_stdin else ""))
    return prompt


def _one_model(positional: str | None, option: str | None) -> str:
    """MODEL as vLLM's `serve MODEL` or as --model; exactly one of the two."""
    if positional is not None and option is not None and positional != option:
        raise D3llmError(f"MODEL given twice ({positional!r} and --model {option!r}); give one")
    if positional is None and option is None:
        raise D3llmError("Missing MODEL: give a bundled name, a model folder or a hub id, e.g. tiny-d3llm "
                         "(or --model tiny-d3llm)")
    return positional or option


def generate(
    prompt: Annotated[str, typer.Argument(help="The user message; - reads it from standard input.")],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    method: Annotated[Optional[str], typer.Option(help="Decode preset (default: d3llm for dLLMs, "
                                                  "d3llm-block for block models, ar for AR models).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help=CANVAS_HELP)] = None,
    temperature: Annotated[Optional[float], typer.Option(help=TEMPERATURE_HELP)] = None,
    threshold: Annotated[Optional[float], typer.Option(help=THRESHOLD_HELP)] = None,
    block_size: Annotated[Optional[int], typer.Option(help=BLOCK_SIZE_HELP)] = None,
    settings: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    device: Device = "auto",
    dtype: Dtype = "auto",
    stream: Annotated[bool, typer.Option("--stream", help="Print text as soon as it is final.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Print NFE, TPF and tokens/s.")] = False,
) -> None:
    """Load a model and answer PROMPT."""
    from d3llm.decode import final_prefix_lengths, generate as decode
    from d3llm.models.tokenizer import prompt_ids

    prompt = _prompt_text(prompt)
    lm = load(model, device, dtype)
    config = decode_config(method, lm.facts.family, max_new_tokens, settings, lm.recipe, temperature=temperature,
                           threshold=threshold, block_size=block_size)
    ids = prompt_ids(lm.tokenizer, prompt)
    shown = [""]

    def show_final_text(state) -> None:
        final = int(final_prefix_lengths(state)[0])
        text = lm.tokenizer.decode(state.response[0, :final].tolist(), skip_special_tokens=True)
        if len(text) > len(shown[0]) and text.startswith(shown[0]):
            typer.echo(text[len(shown[0]):], nl=False)
            shown[0] = text

    out = decode(lm.model, [ids], config, lm.tokenizer.pad_token_id,
                 on_step=show_final_text if stream else None)
    answer = lm.tokenizer.decode(out.sequences[0], skip_special_tokens=True)
    typer.echo(answer[len(shown[0]):] if answer.startswith(shown[0]) else answer)
    sys.stdout.flush()  # the answer and its newline before the statistics on stderr
    if stats:
        tps = sum(out.num_tokens) / max(out.seconds, 1e-9)
        typer.echo(f"[{config.method}] tokens={sum(out.num_tokens)} nfe={out.nfe} "
                   f"tpf={out.tokens_per_forward:.2f} tokens/s={tps:.1f}", err=True)


def chat(
    model_arg: Annotated[Optional[str], typer.Argument(help=MODEL_HELP + " Or give it as --model.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    method: Annotated[Optional[str], typer.Option(help=METHOD_HELP)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help=CANVAS_HELP)] = None,
    temperature: Annotated[Optional[float], typer.Option(help=TEMPERATURE_HELP)] = None,
    threshold: Annotated[Optional[float], typer.Option(help=THRESHOLD_HELP)] = None,
    block_size: Annotated[Optional[int], typer.Option(help=BLOCK_SIZE_HELP)] = None,
    settings: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    history: Annotated[Optional[bool], typer.Option("--history/--no-history", help=(
        "Send the conversation so far with each message (default: yes, except for the bundled models, "
        "which are single-turn: each message is answered on its own)."), show_default=False)] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Talk to a model in the terminal, answers streamed, with NFE, TPF and tokens/s.

    Reads one message per line (with line editing and history on a terminal); /help lists the
    commands: /reset starts a new conversation, /exit (or end of input) quits; Ctrl-C cancels
    the answer being written."""
    from d3llm.decode.config import DecodeConfig, parse_overrides
    from d3llm.serve.chat import ChatSession, banner, repl

    model = _one_model(model_arg, model)
    if max_new_tokens is not None:  # a bad value fails before the model loads
        DecodeConfig(max_new_tokens=max_new_tokens)
    first_class = {"temperature": temperature, "threshold": threshold, "block_size": block_size}
    overrides = {**{k: v for k, v in first_class.items() if v is not None}, **parse_overrides(settings)}  # --set wins
    interactive = sys.stdin.isatty()  # piped questions get answers only
    if interactive:
        typer.echo(f"loading {model} ...", err=True)  # at once: loading takes seconds
    lm = load(model, device, dtype)
    recipe = (lm.recipe or (None, {}))[1]  # a published checkpoint's canvas, else every preset's
    canvas = max_new_tokens if max_new_tokens is not None else recipe.get("max_new_tokens", DecodeConfig.max_new_tokens)
    with ChatSession(lm, method, canvas, history=history, **overrides) as session:
        if interactive:
            typer.echo(banner(session), err=True)
        repl(session)


def _check_serve_options(method: str | None, port: int, log_level: str, max_wait_ms: float,
                         counts: dict[str, int]) -> None:
    """Refuse a bad `d3llm serve` option (`counts`: option -> a value that must be >= 1) in one
    line, before anything is bound or loaded."""
    from d3llm.decode.config import preset

    levels = ("debug", "info", "warning", "error")
    if log_level.lower() not in levels:
        raise D3llmError(f"--log-level must be one of {', '.join(levels)}, got {log_level!r}")
    if not 1 <= port <= 65535:
        raise D3llmError(f"--port must be in 1..65535, got {port}")
    if method is not None:  # an unknown name fails before the model loads
        preset(method)
    for option, value in counts.items():
        if value < 1:
            raise D3llmError(f"{option} must be >= 1, got {value}")
    if not 0 <= max_wait_ms <= 60_000:  # NaN fails too
        raise D3llmError(f"--max-wait-ms must be in 0..60000 (milliseconds), got {max_wait_ms}")


def serve(
    model_arg: Annotated[Optional[str], typer.Argument(help=MODEL_HELP + " Or give it as --model.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    method: Annotated[Optional[str], typer.Option(help="Default " + METHOD_HELP[0].lower() + METHOD_HELP[1:])] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="D3LLM_API_KEY",
                                                   help="Require `Authorization: Bearer KEY`.")] = None,
    max_batch: Annotated[int, typer.Option(help=(
        "Requests decoded together at most: a cap on dynamic batches, not the fixed --batch-size (16) "
        "of eval, sweep and trajectories."))] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request may wait to be batched.")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="Waiting requests before new ones get 503.")] = 256,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest `max_tokens` a request may ask for.")] = 512,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body in bytes; more is refused with "
                                                     "413 before it is parsed.")] = 4 << 20,
    device: Device = "auto",
    dtype: Dtype = "auto",
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error; info logs one line per "
                                                "request and a throughput line every 10 s.")] = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, batched and streaming.

    /v1/completions, /v1/chat/completions, /v1/models, /health, /version and /metrics
    (Prometheus); see docs/reference.md, "Serving"."""
    from d3llm.serve import create_app, run_server
    from d3llm.serve.server import listen

    model = _one_model(model_arg, model)
    _check_serve_options(method, port, log_level, max_wait_ms, {
        "--max-batch": max_batch, "--max-queue": max_queue, "--max-tokens-limit": max_tokens_limit,
        "--max-body-bytes": max_body_bytes})
    log_level = log_level.lower()
    placement(device, dtype)  # a bad --device / --dtype is the first error
    sock = listen(host, port)  # a port in use fails here, in one line, before the model loads
    try:
        lm = load(model, device, dtype)
        server = create_app(lm, method, api_key=api_key, max_batch=max_batch, max_wait_ms=max_wait_ms,
                            max_queue=max_queue, max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes)
    except BaseException:
        sock.close()
        raise
    level = getattr(logging, log_level.upper())  # the server's own log: timestamps, d3llm at --log-level
    logging.basicConfig(level=max(level, logging.WARNING), force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("d3llm").setLevel(level)
    placement_text = f"{lm.model.device}, {str(lm.model.dtype).removeprefix('torch.')}"
    typer.echo(f"serving {server.state.service.model_id} ({placement_text}) at http://{host}:{port}/v1 "
               "(Ctrl-C stops)", err=True)
    run_server(server, host, port, api_key, sock=sock, log_level=log_level)
