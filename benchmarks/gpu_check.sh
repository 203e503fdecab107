#!/usr/bin/env bash
# The GPU check (issue 26): on a machine with one CUDA GPU and no network, build 8B-shaped
# random checkpoints (LLaDA-8B, Dream-7B, Qwen2.5-7B-shaped AR) one at a time, load each with
# d3llm's loader, and print per-forward cost by width, KV bytes per token, projected tokens/s of
# `ar` vs `d3llm-cache` at the bundled student's TPF, and peak GPU memory (benchmarks/gpu_check.py).
# Budget: under 8 minutes in one call; disk: 16 GB at a time under WORK.
#
#   bash benchmarks/gpu_check.sh [WORK]          # from the repository root
#
# Needs a Python with torch (CUDA build), transformers 5.24, safetensors, tokenizers and
# huggingface_hub (`pip install -e .` where those wheels are available). Not run on a CPU:
# gpu_check.py refuses without CUDA. The table goes to docs/benchmarks.md with the card's name.
set -euo pipefail
WORK="${1:-/tmp/d3llm-gpu-check}"
mkdir -p "$WORK"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHON="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
timeout 470 "$PYTHON" benchmarks/gpu_check.py --work "$WORK" --json "$WORK/gpu_check.json" | tee "$WORK/gpu_check.md"
