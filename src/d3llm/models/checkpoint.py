"""Writing model folders: safetensors only, single file or sharded.

    write_checkpoint(net, folder, layout="llada", shards=2)          # a network as it is
    export_model("runs/teacher", "models/teacher", dtype=torch.int8)  # `d3llm export`

`write_checkpoint` writes a network's config and weights in our layout or an official one
(LLaDA, Dream), in a storage dtype, int8 included (`quantized`); `export_model` copies a model
folder with its tokenizer and training records, replacing `out` only once the copy is whole.
`d3llm.models.reading` reads all of them back.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

from d3llm.errors import D3llmError, ModelLoadError
from d3llm.models.catalog import INT8_SCALE
from d3llm.models.layouts import dream_raw_config, hf_name_to_llada, llada_raw_config
from d3llm.models.lm import DECODE_BLOCK_KEY, is_positive_int
from d3llm.models.reading import INDEX_FILE, SINGLE_FILE, load_network
from d3llm.models.tokenizer import load_tokenizer


def quantized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` in int8 storage (`export --storage-dtype int8`, ours): a matrix W is stored as int8 Q under
    its own name and one float16 scale per row under NAME + INT8_SCALE, W ~= Q * scale[:, None]
    (symmetric, scale = max |row| / 127); vectors (norms, biases) in float16. Half float16's size."""
    out = {}
    for name, tensor in state.items():
        if tensor.dim() != 2 or not tensor.is_floating_point():
            out[name] = tensor.to(torch.float16) if tensor.is_floating_point() else tensor
            continue
        scale = (tensor.float().abs().amax(1) / 127).clamp(min=1e-12).to(torch.float16).float()
        out[name] = (tensor.float() / scale.unsqueeze(1)).round().clamp(-127, 127).to(torch.int8)
        out[name + INT8_SCALE] = scale.to(torch.float16)
    return out


def write_checkpoint(
    net: PreTrainedModel, folder: str | Path, layout: str = "hf", shards: int = 1,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `net` in `layout` ('hf', 'llada' or 'dream'), split into `shards` files + index.

    The official layouts are written for tests and for users who hand our models to tools that
    expect them; `load_network` reads all three back.
    """
    folder = Path(folder)
    problem = _layout_problem(layout, net.config.d3llm_family, dtype)
    if problem:
        raise ValueError(problem)
    folder.mkdir(parents=True, exist_ok=True)
    rename = hf_name_to_llada if layout == "llada" else (lambda n: n)
    int8 = dtype == torch.int8
    cast = None if int8 else dtype  # int8: `quantized` picks each tensor's storage
    state = {rename(k): v.detach().to(cast or v.dtype).contiguous()
             for k, v in net.state_dict().items() if not (k == "lm_head.weight" and net.config.tie_word_embeddings)}
    if int8:
        state = quantized(state)
    raw = {"llada": llada_raw_config, "dream": dream_raw_config}.get(layout, lambda c: c.to_dict())(net.config)
    if layout == "hf":  # the precision it computes in once loaded (int8 storage: float16's)
        raw["dtype"] = "float16" if int8 else str(next(iter(state.values())).dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(raw, indent=2, default=str))
    names = sorted(state)
    if shards <= 1:
        save_file(state, str(folder / SINGLE_FILE), metadata={"format": "pt"})
        return folder
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return folder


def _layout_problem(layout: str, family: str, dtype: torch.dtype | None = None) -> str | None:
    """Why `layout` cannot hold a `family` model stored in `dtype`, or None when it can."""
    if layout not in ("hf", "llada", "dream"):
        return f"the layout must be hf, llada or dream, got {layout!r}"
    if dtype == torch.int8 and layout != "hf":
        return f"int8 storage is ours: the hf layout holds it, the official {layout} layout does not"
    if layout == "llada" and family != "llada":
        return f"the LLaDA layout holds llada models, not {family}"
    if layout == "dream" and family != "dream":
        return f"the Dream layout holds dream models, not {family}"
    return None


# Files a trained model folder carries beside its weights (see d3llm.train.run_folder).
RECORD_FILES = ("provenance.json", "curve.jsonl", "runs.jsonl", "train_config.yaml")
# Every file name an export may write (the tokenizer's own file names are added per export):
# a folder holding only such files, with a config and weights, is a previous export.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
)
EXPORT_FILES = frozenset(("config.json", SINGLE_FILE, INDEX_FILE, *TOKENIZER_FILES, *RECORD_FILES))
SHARD_FILE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def export_model(
    source: str | Path, out: str | Path, layout: str = "hf", dtype: torch.dtype | None = None, shards: int = 1,
    overwrite: bool = False, decode_block_size: int | None = None,
) -> Path:
    """Copy a model folder to `out` in another layout and/or precision, with its tokenizer and
    its training records (how the bundled models are made from training runs). A LLaDA/Dream
    model may be given `decode_block_size`: the block size its decoders use unless told
    otherwise (config.json `d3llm_decode_block_size`; a block model's blocks are its training's).

    Nothing in `out` is touched until the source is loaded and every argument checked; the export
    is written into a temporary folder beside `out` (`.NAME.tmp-XXXX`) and moved into place at the
    end, so a failed export leaves `out` as it was. `out` may be missing, empty, or a previous
    export (a folder holding only files an export writes: config.json, weights, the safetensors
    index, tokenizer files, training records), which is replaced. A folder holding anything else is
    refused unless `overwrite`: then the files an export writes are replaced (stale ones, such as
    an older export's shards, removed) and every other file and subfolder is left in place.
    """
    source, given = Path(source), Path(out)
    out = given.resolve()
    if shards < 1:
        raise D3llmError(f"`shards` must be >= 1, got {shards}")
    if out == source.resolve():
        raise ModelLoadError(f"`out` must differ from the source folder {source}")
    net = load_network(source)
    tokenizer = load_tokenizer(source)
    problem = _layout_problem(layout, net.config.d3llm_family, dtype)
    if problem:
        raise D3llmError(problem)
    if decode_block_size is not None:
        _set_decode_block_size(net, layout, decode_block_size)
    tensors = len(net.state_dict()) - bool(net.config.tie_word_embeddings)
    if shards > tensors:
        raise D3llmError(f"`shards` must be at most the model's {tensors} tensors (one or more per file), got {shards}")
    ours = EXPORT_FILES | set(getattr(tokenizer, "vocab_files_names", {}).values())
    _recover_leftovers(out)
    replaced = _files_to_replace(out, given, ours, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise D3llmError(f"cannot write beside {given}: {exc.strerror or exc}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become `out`'s mode
        write_checkpoint(net, staging, layout=layout, shards=shards, dtype=dtype)
        tokenizer.save_pretrained(staging)
        for name in RECORD_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, staging / name)
        _move_into_place(staging, out, replaced)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return given


def _set_decode_block_size(net: PreTrainedModel, layout: str, decode_block_size: int) -> None:
    """Store `decode_block_size` in a LLaDA/Dream model's config, or say why it cannot be."""
    if net.config.d3llm_family not in ("llada", "dream"):
        raise D3llmError(f"`decode_block_size` is a LLaDA/Dream-style model's setting, not a "
                         f"{net.config.d3llm_family} model's (a block model decodes the blocks it was trained with)")
    if layout != "hf":
        raise D3llmError(f"`decode_block_size` is stored in the hf layout only (the official {layout} config has no "
                         "place for it)")
    if not is_positive_int(decode_block_size):
        raise D3llmError(f"`decode_block_size` must be a positive integer, got {decode_block_size!r}")
    setattr(net.config, DECODE_BLOCK_KEY, decode_block_size)


def _is_export_file(entry: Path, ours: set[str] | frozenset[str]) -> bool:
    return (entry.name in ours or bool(SHARD_FILE.fullmatch(entry.name))) and entry.is_file()


def _files_to_replace(out: Path, given: Path, ours, overwrite: bool) -> list[Path]:
    """The files of `out` an export replaces; raises when `out` may not be written."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise D3llmError(f"--out {given} exists and is not a folder; choose another --out")
    entries = sorted(out.iterdir())
    mine = [e for e in entries if _is_export_file(e, ours)]
    others = [e.name for e in entries if e not in mine]
    names = {e.name for e in mine}
    previous_export = not others and "config.json" in names and bool({SINGLE_FILE, INDEX_FILE} & names)
    if entries and not previous_export and not overwrite:
        listed = others or [e.name for e in mine]
        raise D3llmError(
            f"--out {given} is not empty and not a previous export (it holds {', '.join(listed[:3])}"
            f"{', ...' if len(listed) > 3 else ''}); pass --overwrite to replace only the files an export "
            "writes there (the others are kept), or choose another --out"
        )
    blocked = [name for name in others if name in ours]
    if blocked:
        raise D3llmError(f"--out {given} holds a folder named {blocked[0]}, where export writes a file")
    return mine


def _recover_leftovers(out: Path) -> None:
    """An export killed midway leaves its hidden folders beside `out`: `.NAME.tmp-*` (the
    unfinished export: removed) and `.NAME.old-*` (files it had moved aside: each one `out` lacks
    is put back, so no file of the user is lost, then the folder is removed)."""
    if not out.parent.is_dir():
        return
    for aside in sorted(out.parent.glob(f".{glob.escape(out.name)}.old-*")):
        if out.is_dir():
            for path in sorted(aside.iterdir()):
                if not (out / path.name).exists():
                    path.rename(out / path.name)
        if out.is_dir() or not any(aside.iterdir()):
            shutil.rmtree(aside, ignore_errors=True)
    for staging in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, out: Path, replaced: list[Path]) -> None:
    """Move the finished export from `staging` into `out`; the replaced files are kept aside until
    the new ones are in, and put back if that fails."""
    if not out.exists():
        staging.rename(out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    moved_aside, moved_in = [], []
    try:
        for path in replaced:
            path.rename(aside / path.name)
            moved_aside.append(path.name)
        for path in sorted(staging.iterdir()):
            path.rename(out / path.name)
            moved_in.append(path.name)
    except BaseException:
        for name in moved_in:
            (out / name).unlink(missing_ok=True)
        for name in moved_aside:
            (aside / name).rename(out / name)
        with contextlib.suppress(OSError):
            aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)
