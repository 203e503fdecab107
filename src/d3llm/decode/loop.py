"""Decoding: batched prompts in, `DecodeOutput` out.

Prompts of different lengths are left-padded into one canvas `[pad, prompt, MASK x N]` with
true position ids, so the response region is the same columns for every row.

- `vanilla` (LLaDA): blocks of `block_size` left to right; each forward commits, per row,
  the `tokens_per_step` masked positions of the current block whose argmax token is most
  probable. The whole canvas is forwarded every step (no cache).
- `ar`: greedy next-token decoding with a transformers KV cache; a row stops at EOS.

NFE counts model forwards (one per step for the whole batch). Generated-token counts per row
run to and including the first EOS, as in shared/design.md's measurement conventions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from d3llm.decode.config import DecodeConfig
from d3llm.errors import D3llmError
from d3llm.models import DiffusionLM


@dataclass
class DecodeOutput:
    sequences: list[list[int]]  # per row: response ids up to (not including) the first EOS
    num_tokens: list[int]  # per row: generated tokens up to and including the first EOS
    nfe: int  # model forward calls for the whole batch
    seconds: float  # wall time of the decode

    @property
    def tokens_per_forward(self) -> float:
        return sum(self.num_tokens) / max(self.nfe, 1)


def left_pad(prompts: list[list[int]], pad_id: int, extra: int, fill_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvas (B, P + extra) with prompts right-aligned at P, then `extra` x `fill_id`;
    and its attention mask (1 on real tokens)."""
    width = max(len(p) for p in prompts)
    canvas = torch.full((len(prompts), width + extra), fill_id, dtype=torch.long)
    attention = torch.ones_like(canvas)
    for row, p in enumerate(prompts):
        canvas[row, : width - len(p)] = pad_id
        canvas[row, width - len(p) : width] = torch.tensor(p)
        attention[row, : width - len(p)] = 0
    return canvas, attention


def positions_of(attention: torch.Tensor) -> torch.Tensor:
    return (attention.cumsum(1) - 1).clamp(min=0)


def pick_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token choice and its probability for every position: (..., V) -> (...), (...)."""
    probs = torch.softmax(logits.float(), dim=-1)
    if temperature > 0:
        sample_probs = torch.softmax(logits.float() / temperature, dim=-1)
        flat = sample_probs.reshape(-1, sample_probs.shape[-1])
        tokens = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    else:
        tokens = probs.argmax(-1)
    return tokens, probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _finish(response: torch.Tensor, eos_id: int) -> tuple[list[list[int]], list[int]]:
    sequences, counts = [], []
    for row in response.tolist():
        n = row.index(eos_id) + 1 if eos_id in row else len(row)
        sequences.append(row[: n - 1] if eos_id in row else row)
        counts.append(n)
    return sequences, counts


@torch.no_grad()
def generate(model: DiffusionLM, prompts: list[list[int]], config: DecodeConfig, pad_token_id: int) -> DecodeOutput:
    """Decode a batch of tokenised prompts with `config`."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise D3llmError("every prompt must hold at least one token")
    longest = max(len(p) for p in prompts) + config.max_new_tokens
    if longest > model.facts.max_length:
        raise D3llmError(
            f"prompt + `max_new_tokens` = {longest} tokens exceeds the model's maximum length "
            f"{model.facts.max_length}"
        )
    if config.method == "ar" and model.facts.is_diffusion:
        raise D3llmError(f"method 'ar' needs an autoregressive model; this one is {model.facts.family}")
    if config.method != "ar" and not model.facts.is_diffusion:
        raise D3llmError(f"method {config.method!r} needs a diffusion model; this one is autoregressive")
    start = time.perf_counter()
    decode = _generate_ar if config.method == "ar" else _generate_vanilla
    response, nfe = decode(model, prompts, config, pad_token_id)
    sequences, counts = _finish(response, model.facts.eos_token_id)
    return DecodeOutput(sequences, counts, nfe, time.perf_counter() - start)


def _generate_vanilla(model, prompts, config, pad_id):
    mask_id = model.facts.mask_token_id
    canvas, attention = left_pad(prompts, pad_id, config.max_new_tokens, mask_id)
    canvas, attention = canvas.to(model.device), attention.to(model.device)
    positions = positions_of(attention)
    start = canvas.shape[1] - config.max_new_tokens
    generator = torch.Generator().manual_seed(config.seed) if config.temperature > 0 else None
    nfe = 0
    for block_start in range(start, canvas.shape[1], config.block_size):
        block = slice(block_start, min(block_start + config.block_size, canvas.shape[1]))
        while (canvas[:, block] == mask_id).any():
            logits = model(canvas, attention_mask=attention, position_ids=positions).logits
            nfe += 1
            tokens, confidence = pick_tokens(logits[:, block], config.temperature, generator)
            masked = canvas[:, block] == mask_id  # (B, k)
            score = torch.where(masked, confidence, -1.0)
            k = min(config.tokens_per_step, score.shape[1])
            top = score.topk(k, dim=1)
            chosen = torch.zeros_like(masked).scatter_(1, top.indices, True) & masked
            canvas[:, block] = torch.where(chosen, tokens, canvas[:, block])
    return canvas[:, start:].cpu(), nfe


def _generate_ar(model, prompts, config, pad_id):
    from transformers import DynamicCache

    eos = model.facts.eos_token_id
    canvas, attention = left_pad(prompts, pad_id, 0, pad_id)
    canvas, attention = canvas.to(model.device), attention.to(model.device)
    cache = DynamicCache(config=model.config)
    generator = torch.Generator().manual_seed(config.seed) if config.temperature > 0 else None
    out = model(canvas, attention_mask=attention, position_ids=positions_of(attention), past_key_values=cache, use_cache=True)
    nfe, produced = 1, []
    done = torch.zeros(len(prompts), dtype=torch.bool, device=canvas.device)
    for _ in range(config.max_new_tokens):
        token, _ = pick_tokens(out.last_logits, config.temperature, generator)  # (B,)
        token = torch.where(done, eos, token)
        produced.append(token)
        done |= token == eos
        if done.all() or len(produced) == config.max_new_tokens:
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], 1)
        position = positions_of(attention)[:, -1:]
        out = model(token[:, None], attention_mask=attention, position_ids=position, past_key_values=cache, use_cache=True)
        nfe += 1
    return torch.stack(produced, 1).cpu(), nfe
