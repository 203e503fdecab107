"""Model families: bidirectional attention, logit shift, KV cache, the AR baseline."""

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

from d3llm.models import DiffusionLM
from tests.conftest import VOCAB, toy_model


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_diffusion_families_attend_both_ways(family):
    model = toy_model(family)
    x = torch.randint(3, VOCAB, (2, 12))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % VOCAB
    changed = (model(x).logits[:, :4] - model(y).logits[:, :4]).abs().max()
    assert changed > 1e-5  # a later token changes earlier predictions


def test_ar_family_is_causal():
    model = toy_model("ar")
    x = torch.randint(3, VOCAB, (2, 12))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % VOCAB
    torch.testing.assert_close(model(x).logits[:, :-1], model(y).logits[:, :-1])


@pytest.mark.parametrize("family", ["dream", "ar"])
def test_shifted_families_align_logits(family):
    model = toy_model(family)
    x = torch.randint(3, VOCAB, (2, 10))
    raw = model.net(x).logits
    out = model(x)
    torch.testing.assert_close(out.logits[:, 1:], raw[:, :-1])  # position i-1 predicts token i
    torch.testing.assert_close(out.logits[:, 0], raw[:, 0])
    torch.testing.assert_close(out.last_logits, raw[:, -1])


def test_llada_has_no_shift():
    model = toy_model("llada")
    x = torch.randint(3, VOCAB, (2, 10))
    out = model(x)
    torch.testing.assert_close(out.logits, model.net(x).logits)
    assert out.last_logits is None


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cached_prefix_from_full_forward_equals_full_forward(family):
    """The d3LLM cache case: keys/values of a full-canvas forward, cropped to the prefix, then
    the suffix forwarded with them gives the full forward's logits (also across Dream's shift
    at the cache boundary, with `prev_logits`)."""
    model = toy_model(family)
    x = torch.randint(3, VOCAB, (2, 16))
    prefix = 9
    cache = DynamicCache(config=model.config)
    full = model(x, past_key_values=cache, use_cache=True)
    cache.crop(prefix - cache.get_seq_length())  # transformers 5: negative count to remove
    assert cache.get_seq_length() == prefix
    # the boundary prediction must come from the cached position, i.e. the full forward's
    prev = full.logits[:, prefix] if family == "dream" else None
    suffix = model(x[:, prefix:], past_key_values=cache, use_cache=True, prev_logits=prev)
    torch.testing.assert_close(suffix.logits, full.logits[:, prefix:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_prefix_cache_equals_full_forward_under_block_mask(family):
    """Prefix forwarded alone and cached, then the rest with the cache, equals one forward in
    which prefix positions see only the prefix (and the rest sees everything)."""
    model = toy_model(family)
    x = torch.randint(3, VOCAB, (2, 14))
    prefix, n = 6, x.shape[1]
    cache = DynamicCache(config=model.config)
    first = model(x[:, :prefix], past_key_values=cache, use_cache=True)
    rest = model(x[:, prefix:], past_key_values=cache, use_cache=True, prev_logits=first.last_logits)
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed[:prefix, prefix:] = False
    mask = torch.zeros(2, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    full = model(x, attention_mask=mask)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full.logits, atol=1e-5, rtol=1e-5)


def test_ar_equals_stock_transformers_model(tmp_path):
    model = toy_model("ar")
    model.save_pretrained(tmp_path)
    stock = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert stock.config.is_causal
    x = torch.randint(3, VOCAB, (3, 11))
    ours = model(x)
    theirs = stock(x).logits
    torch.testing.assert_close(ours.logits[:, 1:], theirs[:, :-1])
    torch.testing.assert_close(ours.last_logits, theirs[:, -1])


def test_padding_mask_hides_left_padding():
    """A left-padded row with true position ids gives the unpadded row's logits."""
    model = toy_model("llada")
    x = torch.randint(3, VOCAB, (1, 8))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    attention = torch.tensor([[0, 0, 0] + [1] * 8])
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    out = model(padded, attention_mask=attention, position_ids=positions).logits[:, 3:]
    torch.testing.assert_close(out, model(x).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream", "ar"])
def test_logits_to_keep_returns_the_tail_of_the_aligned_logits(family):
    model = toy_model(family)
    x = torch.randint(3, VOCAB, (2, 10))
    full = model(x)
    for keep in (1, 4, 10, 12):
        part = model(x, logits_to_keep=keep)
        torch.testing.assert_close(part.logits, full.logits[:, -min(keep, 10):])
        if family != "llada":
            torch.testing.assert_close(part.last_logits, full.last_logits)


def test_ar_to_llada_becomes_bidirectional_with_the_same_weights(tmp_path):
    from d3llm.models import load_model
    from d3llm.models.convert import ar_to_llada

    ar = toy_model("ar")
    llada = DiffusionLM(ar_to_llada(ar.net, mask_token_id=2))
    assert llada.facts.family == "llada" and llada.facts.logit_shift == 0
    fresh = toy_model("llada")
    fresh.net.load_state_dict(llada.net.state_dict())
    x = torch.randint(3, VOCAB, (2, 9))
    torch.testing.assert_close(llada(x).logits, fresh(x).logits)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % VOCAB
    assert (llada(x).logits[:, 0] - llada(y).logits[:, 0]).abs().max() > 1e-5


def test_ar_to_dream_keeps_the_ar_computation_but_attends_both_ways():
    from d3llm.models.convert import ar_to_dream

    ar = toy_model("ar", num_layers=1)  # one layer: the last position's inputs are the same
    x = torch.randint(3, VOCAB, (2, 9))
    expected_last = ar(x).last_logits
    dream = DiffusionLM(ar_to_dream(ar.net, mask_token_id=2)).eval()
    assert dream.facts.family == "dream"
    # the last position attends to every position in both models: identical predictions
    torch.testing.assert_close(dream(x).last_logits, expected_last, atol=1e-5, rtol=1e-5)
