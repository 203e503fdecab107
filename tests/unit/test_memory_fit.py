"""A model too large for float32 in this machine's memory: "auto" loads it in bfloat16, an
explicit float32 is refused in one line before any weight is read (docs/benchmarks.md, real size)."""

from __future__ import annotations

import pytest
import torch

from d3llm.errors import ModelLoadError
from d3llm.models import load_model, loading
from d3llm.models.catalog import parameters_from_weights


def test_auto_takes_bfloat16_when_float32_does_not_fit(monkeypatch, model_dir):
    params = parameters_from_weights(model_dir)
    assert load_model(model_dir, device="cpu").model.dtype == torch.float32  # fits: float32, as ever
    monkeypatch.setattr(loading, "_mem_available", lambda: 3 * params)  # 4 bytes a parameter do not fit
    assert load_model(model_dir, device="cpu").model.dtype == torch.bfloat16
    assert load_model(model_dir, device="cpu", dtype="bfloat16").model.dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match=r"`dtype` float32: .* more than the .* GiB of memory available; "
                                             "use bfloat16"):
        load_model(model_dir, device="cpu", dtype="float32")


def test_unknown_memory_changes_nothing(monkeypatch, model_dir):
    assert loading._mem_available() is None or loading._mem_available() > 0
    monkeypatch.setattr(loading, "_mem_available", lambda: None)
    assert load_model(model_dir, device="cpu", dtype="float32").model.dtype == torch.float32
