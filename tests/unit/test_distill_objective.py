"""Distillation objective: window masking from rank vectors, curricula, loss terms."""

import math

import pytest
import torch
import torch.nn.functional as F

from d3llm.errors import D3llmError
from d3llm.train.distill import (
    DistillSettings, certainty_entropy, distill_loss, mask_ratios, masked_ce, through_first_eos, window_masks,
    window_size,
)
from tests.conftest import toy_model

# Two prompt tokens, then a response of 8 that a teacher decoded in blocks of 4.
RANK = torch.tensor([[-1, -1, 1, 0, 3, 2, 6, 4, 7, 5]])
P, N = torch.tensor([2]), torch.tensor([8])


def as_list(mask):
    return [int(v) for v in mask[0]]


def test_trajectory_masking_of_the_first_window():
    # t = 0.75: floor(0.25 * 4) = 1 token decoded -> snapshot 0 + 1 -> ranks 0 and 1 are visible.
    m = window_masks(RANK, P, N, k=4, t=torch.tensor([0.75]), index=torch.tensor([0]))
    assert as_list(m.window) == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert as_list(m.masked) == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert as_list(m.after) == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_trajectory_masking_of_a_later_window():
    # window 1 = response [4, 8); t = 0.5: floor(0.5 * 4) = 2 -> snapshot 4 + 2 = 6 -> only rank 7 hidden.
    m = window_masks(RANK, P, N, k=4, t=torch.tensor([0.5]), index=torch.tensor([1]))
    assert as_list(m.window) == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert as_list(m.masked) == [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    assert not m.after.any()


def test_a_window_past_the_end_is_the_last_one_and_may_be_short():
    m = window_masks(RANK, P, N, k=3, t=torch.tensor([1.0]), index=torch.tensor([5]))
    assert as_list(m.window) == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]  # windows [0,3) [3,6) [6,8)
    # t = 1: u = 0 -> snapshot (s - P) + 0 = 6. The window is not aligned with the teacher's
    # blocks of 4, so response position 7 (rank 5) was already decoded by then: only rank 7 hides.
    assert as_list(m.masked) == [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]


@pytest.mark.parametrize("t, expected", [(0.0, 0), (1.0, 4)])
def test_random_masking_extremes(t, expected):
    m = window_masks(RANK, P, N, k=4, t=torch.tensor([t]), masking="random", index=torch.tensor([0]))
    assert int(m.masked.sum()) == expected


def test_window_curriculum():
    s = DistillSettings(trajectories="x")  # (16, 16, 24, 24, 32, 32)
    assert window_size(s, 0.0) == 16
    assert window_size(s, 0.25) == 20  # e = 1.5: halfway from 16 to 24
    assert window_size(s, 0.5) == 24
    assert window_size(s, 0.9) == 32 and window_size(s, 1.0) == 32
    assert window_size(DistillSettings(trajectories="x", progressive_window=False), 0.0) == 32


def test_noise_curriculum():
    s = DistillSettings(trajectories="x")
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(mask_ratios(s, 1.0, 50, g), torch.full((50,), 0.8))
    half = mask_ratios(s, 0.5, 1000, g)
    assert half.min() >= 0.4 and half.max() <= 0.8
    fixed = mask_ratios(DistillSettings(trajectories="x", progressive_noise=False), 1.0, 1000, g)
    assert fixed.min() < 0.1 and fixed.max() > 0.7  # the floor never rises


def test_cross_entropy_and_certainty_terms_on_toy_logits():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]])
    targets = torch.tensor([[0, 2, 1]])
    where = torch.tensor([[True, True, False]])
    expected_ce = F.cross_entropy(logits[0, :2], targets[0, :2])
    assert torch.isclose(masked_ce(logits, targets, where), expected_ce)
    # only position 0 has the right argmax; entropy of softmax(logits / 0.5) there
    q = torch.softmax(logits[0, 0] / 0.5, -1)
    assert torch.isclose(certainty_entropy(logits, targets, where, 0.5), -(q * q.log()).sum())
    none_right = torch.tensor([[False, True, False]])
    assert certainty_entropy(logits, targets, none_right, 0.5) == 0
    assert masked_ce(logits, targets, torch.zeros_like(where)) == 0


def test_total_loss_combines_the_terms():
    model = toy_model("llada")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "rank": RANK, "prompt_len": P, "response_len": N}
    only_ce = DistillSettings(trajectories="x", complementary=False, entropy_weight=0.0, t_min=0.8)
    torch.manual_seed(0)
    loss, parts = distill_loss(model, batch, only_ce, progress=0.0)
    assert math.isclose(loss.item(), parts["ce"] / 4, rel_tol=1e-6)
    full = DistillSettings(trajectories="x", t_min=0.8)
    torch.manual_seed(0)
    loss, parts = distill_loss(model, batch, full, progress=0.0)
    assert math.isclose(loss.item(), (parts["ce"] + parts["ce_rev"] + 2.0 * parts["entropy"]) / 4, rel_tol=1e-5)
    assert parts["ce_rev"] > 0


def test_bad_settings_name_the_setting():
    with pytest.raises(D3llmError, match="distill.masking"):
        DistillSettings(trajectories="x", masking="sometimes")
    with pytest.raises(D3llmError, match="distill.t_min"):
        DistillSettings(trajectories="x", t_min=0.9, t_max=0.5)


def test_windows_stop_at_the_block_of_the_first_eos():
    eos = 2
    # prompt of 2, response of 12; first EOS at response index 5 -> blocks of 4 end at 8
    ids = torch.tensor([[9, 9, 5, 6, 7, 8, 9, eos, eos, eos, eos, eos, eos, eos],
                        [9, 9, 5, 6, 7, eos, eos, eos, eos, eos, eos, eos, eos, eos],
                        [9, 9, 5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]])
    P3, N3 = torch.tensor([2, 2, 2]), torch.tensor([12, 12, 12])
    assert through_first_eos(ids, P3, N3, eos, k=4).tolist() == [8, 4, 12]  # no EOS: unchanged
    assert through_first_eos(ids, P3, N3, eos, k=8).tolist() == [8, 8, 12]


def test_skipping_eos_blocks_is_for_block_models_only():
    from d3llm.train.config import TrainConfig

    raw = {"family": "llada", "init_from": "t", "distill": {"trajectories": "x", "skip_eos_blocks": True}}
    with pytest.raises(D3llmError, match="distill.skip_eos_blocks"):
        TrainConfig.from_dict(raw)
    assert TrainConfig.from_dict(dict(raw, family="block")).distill.skip_eos_blocks


def test_with_skip_eos_blocks_nothing_after_the_eos_block_reaches_the_loss():
    model = toy_model("block", block_size=4)
    eos = model.facts.eos_token_id
    prompt, response = [5, 6, 7], [8, eos, eos, eos] + [eos] * 8  # EOS in the first block of 4
    other = response[:4] + [9, 10, 11, 12, 13, 14, 15, 16]  # the blocks after it differ

    def loss(resp, skip):
        ids = torch.tensor([prompt + resp])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompt_len": torch.tensor([3]),
                 "response_len": torch.tensor([12]), "rank": torch.tensor([[-1] * 3 + list(range(12))])}
        settings = DistillSettings(trajectories="x", skip_eos_blocks=skip, t_min=0.5)
        with torch.no_grad():
            return [distill_loss(model, batch, settings, 0.0, torch.Generator().manual_seed(s))[0].item()
                    for s in range(6)]

    assert loss(response, True) == loss(other, True)  # only block 0 is ever a window
    assert loss(response, False) != loss(other, False)
