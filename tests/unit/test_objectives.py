"""The masked-diffusion objective's settings: mask ratios, prefix masks, loss weighting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import toy_model
from d3llm.errors import D3llmError
from d3llm.train.config import TrainConfig
from d3llm.train.objectives import (
    DiffusionObjective,
    maskable_positions,
    masked_diffusion_loss,
    response_mask,
    sample_mask_ratio,
)


def _batch(rows: int = 8, prompt: int = 5, response: int = 20) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 64, (rows, prompt + response))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "prompt_len": torch.full((rows,), prompt)}


def test_stratified_ratios_are_evenly_spaced_within_bounds():
    objective = DiffusionObjective(t_sampling="stratified", t_min=0.2, t_max=0.6)
    t = sample_mask_ratio(objective, 8, torch.Generator().manual_seed(0)).squeeze(1)
    assert ((t >= 0.2) & (t <= 0.6)).all()
    gaps = torch.sort(t).values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, 0.4 / 8), atol=1e-5)


def test_prefix_rows_keep_a_clean_prefix_of_the_response():
    batch = _batch(rows=64)
    maskable, always = maskable_positions(DiffusionObjective(prefix_rows=1.0), batch, torch.Generator().manual_seed(0))
    assert not always.any()  # no prefix_window: the ratio t applies to the whole tail
    in_response = response_mask(batch)
    assert not (maskable & ~in_response).any()  # never the prompt
    for row in maskable:  # maskable = one contiguous tail of the response
        first = int(row.int().argmax())
        assert row[first:].all() and not row[:first].any() and first >= 5
    cut_lengths = {int(row.sum()) for row in maskable}
    assert len(cut_lengths) > 5  # cut positions vary
    uniform, always = maskable_positions(DiffusionObjective(), batch, None)
    assert torch.equal(uniform, in_response) and not always.any()


def test_default_objective_is_llada_loss_and_token_mean_differs():
    """The default reproduces LLaDA's CE x 1/t / response length, drawing t and then the mask
    from the generator, in that order; token_mean is the plain mean over masked tokens."""
    model, batch = toy_model("llada"), _batch()
    torch.manual_seed(0)
    default = masked_diffusion_loss(model, batch, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = 1e-3 + (1 - 1e-3) * torch.rand(8, 1, generator=g)
    masked = response_mask(batch) & (torch.rand(batch["input_ids"].shape, generator=g) < t)
    noisy = torch.where(masked, 2, batch["input_ids"])
    ce = F.cross_entropy(model(noisy).logits.transpose(1, 2), batch["input_ids"], reduction="none")
    assert torch.allclose(default, ((ce * masked / t).sum(1) / 20).mean(), rtol=1e-5)
    mean = masked_diffusion_loss(model, batch, torch.Generator().manual_seed(3),
                                 DiffusionObjective(weighting="token_mean"))
    assert torch.allclose(mean, (ce * masked).sum() / masked.sum(), rtol=1e-5)


@pytest.mark.parametrize("raw, message", [
    ({"weighting": "elbo"}, "objective.weighting"),
    ({"t_sampling": "sobol"}, "objective.t_sampling"),
    ({"t_min": 0.0}, "objective.t_min"),
    ({"t_min": 0.5, "t_max": 0.4}, "objective.t_min"),
    ({"prefix_rows": 1.5}, "objective.prefix_rows"),
    ({"prefix_window": 0}, "objective.prefix_window"),
    ({"prefix_window": 2.5}, "objective.prefix_window"),
])
def test_bad_objective_settings_name_the_field(raw, message):
    with pytest.raises(D3llmError, match=message):
        TrainConfig.from_dict({"objective": raw})


def test_unknown_objective_key_is_refused():
    with pytest.raises(D3llmError, match="unknown objective key"):
        TrainConfig.from_dict({"objective": {"weighting": "token_mean", "ratio": 1}})
    config = TrainConfig.from_dict({"objective": {"weighting": "token_mean"}})
    assert config.objective.weighting == "token_mean"
    assert TrainConfig.from_dict(config.to_dict()) == config  # survives the saved recipe


def test_prefix_cuts_fall_in_the_content_not_the_eos_padding():
    batch = _batch(rows=256, prompt=5, response=20)
    batch["input_ids"][:, 5 + 6 :] = 1  # content: 6 tokens, then EOS (id 1) padding
    maskable, _ = maskable_positions(DiffusionObjective(prefix_rows=1.0), batch, torch.Generator().manual_seed(0), 1)
    first = maskable.int().argmax(1)
    assert int(first.min()) == 5 and int(first.max()) <= 5 + 6  # at most: clean through the first EOS
    assert len(set(first.tolist())) == 7  # every cut in 0..6 occurs


def test_prefix_window_masks_everything_beyond_it():
    """With `prefix_window` w, a prefix row is clean up to its cut, masked with ratio t over the
    next w tokens, and masked whole after them: no later token is ever in view."""
    batch = _batch(rows=64)
    objective = DiffusionObjective(prefix_rows=1.0, prefix_window=3, weighting="token_mean")
    maskable, always = maskable_positions(objective, batch, torch.Generator().manual_seed(0))
    for row_maskable, row_always in zip(maskable, always):
        first = int(row_maskable.int().argmax())
        assert not row_always[: first + 3].any() and row_always[first + 3 :].equal(row_maskable[first + 3 :])
    model = toy_model("llada")
    seen = []
    model.net.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"]), with_kwargs=True)
    masked_diffusion_loss(model, batch, torch.Generator().manual_seed(0), objective)
    generator = torch.Generator().manual_seed(0)
    maskable, always = maskable_positions(objective, batch, generator)
    assert ((seen[0] == 2) | ~always).all()  # the same draws: every `always` position went in masked
