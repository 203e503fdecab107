"""`ar-spec` (prompt-lookup speculative decoding): the `ar` output exactly, fewer forwards."""

import pytest

from d3llm.decode import generate, preset
from d3llm.decode.config import DecodeSettingError, resolve_config
from tests.conftest import toy_model

# Repetitive prompts: the draft (what followed the last n-gram earlier in the text) is often right.
PROMPTS = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 10, 11, 9, 10], [12, 13]]


def test_speculation_decodes_exactly_what_ar_decodes():
    model = toy_model("ar", seed=3)
    ar = generate(model, PROMPTS, preset("ar", max_new_tokens=24), 0)
    spec = generate(model, PROMPTS, preset("ar-spec", max_new_tokens=24), 0)
    assert spec.sequences == ar.sequences and spec.num_tokens == ar.num_tokens
    assert spec.nfe == sum(spec.row_forwards) and all(f >= 1 for f in spec.row_forwards)
    assert spec.forward_seconds > 0
    assert all(int(x) in range(64) for row in spec.response.tolist() for x in row)  # no column left unset


def test_a_draft_that_is_accepted_saves_forwards():
    model = toy_model("ar", seed=3)
    ar = generate(model, PROMPTS[:1], preset("ar", max_new_tokens=24), 0)
    # A prompt that is the model's own greedy continuation, repeated: the draft is its future.
    prompt = PROMPTS[0] + ar.sequences[0][:12]
    again = generate(model, [prompt + prompt], preset("ar", max_new_tokens=12), 0)
    spec = generate(model, [prompt + prompt], preset("ar-spec", max_new_tokens=12), 0)
    assert spec.sequences == again.sequences
    assert again.row_forwards[0] == 12 and spec.row_forwards[0] <= 3  # 12 tokens in a few verifications


def test_ar_spec_is_for_ar_models_and_greedy():
    with pytest.raises(DecodeSettingError, match="`method` 'ar-spec' cannot decode a diffusion model"):
        resolve_config("ar-spec", "llada")
    with pytest.raises(DecodeSettingError, match="`temperature` must be 0 with method 'ar-spec'") as info:
        resolve_config("ar-spec", "ar", temperature=0.7)
    assert info.value.setting == "temperature"
