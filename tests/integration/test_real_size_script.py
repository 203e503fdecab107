"""benchmarks/real_size.py at toy width: the official configs it writes load with `load_model`
as the right family, the weights' bytes match the index, and its measure phase runs.
(The 8B run itself is docs/benchmarks.md's, not a test.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import real_size  # noqa: E402

from d3llm.models import load_model  # noqa: E402


@pytest.mark.parametrize("shape, family", [("llada", "llada"), ("dream", "dream"), ("qwen2-ar", "ar")])
def test_the_official_layouts_it_writes_load(tmp_path, monkeypatch, shape, family):
    small = {**real_size.SHAPES[shape], "hidden": 32, "heads": 4, "kv_heads": 2 if shape != "llada" else 4,
             "mlp": 48, "layers": 2}
    monkeypatch.setitem(real_size.SHAPES, shape, small)
    folder = tmp_path / shape
    total = real_size.build(folder, shape)
    assert 1 < len(list(folder.glob("model-*.safetensors"))) <= small["shards"]  # sharded, with an index
    lm = load_model(folder, device="cpu", dtype="bfloat16")
    assert lm.facts.family == family and 2 * lm.model.num_parameters() == total
    if family != "ar":
        assert lm.facts.mask_token_id == small["mask"] == lm.tokenizer.mask_token_id
    result = real_size.measure(folder, [1, 4], repeats=1, new_tokens=2)
    assert result["kv_bytes_per_token"] == 2 * 2 * small["kv_heads"] * (32 // 4) * 2  # K and V, layers, heads, dim, bf16
    assert all(d["nfe"] >= 1 for d in result["decode"].values())
    assert "peak RSS" in real_size.table(result, shape)
