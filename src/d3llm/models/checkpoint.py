"""Reading and writing weights: safetensors only (no pickle), single file or sharded.

    net = load_network("path/to/folder")           # any layout in d3llm.models.layouts
    write_checkpoint(model, folder, layout="llada", shards=2)

Loading builds the network on the `meta` device and assigns the stored tensors, so an
8B checkpoint costs its weights' memory once, not twice. Every problem a user can cause
(missing files, a truncated or corrupted shard, names or shapes that do not match the
config) is a `ModelLoadError` that names the file and the tensor.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PretrainedConfig, PreTrainedModel

from d3llm.errors import D3llmError, ModelLoadError
from d3llm.files import read_json as read_json_file
from d3llm.models.catalog import INT8_SCALE
from d3llm.models.layouts import (
    Layout, detect_layout, dream_raw_config, hf_name_to_llada, llada_raw_config,
)
from d3llm.models.lm import DECODE_BLOCK_KEY, FAMILIES, is_positive_int, network_class
from d3llm.models.tokenizer import load_tokenizer

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_json(path: Path) -> dict:
    """A JSON file holding an object; every problem is a `ModelLoadError` naming the file."""
    if not os.path.lexists(path):
        raise ModelLoadError(f"{path} not found")
    try:
        data = read_json_file(path, max_bytes=256 << 20)  # regular files only: a FIFO would block
    except D3llmError as exc:
        raise ModelLoadError(str(exc)) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder, from the index when there is one."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index} has no 'weight_map' (a mapping of tensor names to shard files)")
        for name in set(weight_map.values()):
            if not isinstance(name, str) or not name:
                raise ModelLoadError(f"{index}: 'weight_map' values must be shard file names, got {name!r}")
            # judged by the name, not by where a symlink points: a hub cache's shards are links into blobs/
            if Path(name).is_absolute() or os.path.normpath(name).split(os.sep)[0] == "..":
                raise ModelLoadError(f"{index}: shard {name!r} lies outside the model folder; refused")
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{folder}: shards listed in {INDEX_FILE} are missing: {missing}")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ModelLoadError(
            f"{folder} holds only pickle weights (.bin/.pt); d3llm loads safetensors only, "
            "because unpickling can run arbitrary code (convert them with safetensors first)"
        )
    raise ModelLoadError(f"{folder} has no {SINGLE_FILE} or {INDEX_FILE}")


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except Exception as exc:  # safetensors raises its own error types for bad bytes
            raise ModelLoadError(f"{path} is corrupted or truncated ({exc})") from None
    return _dequantized(tensors, folder)


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


def _dequantized(tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """Tensors stored in int8 (`quantized`) as float32; an int8 tensor and its scale must come
    together."""
    for key in [k for k in tensors if k.endswith(INT8_SCALE)]:
        name, scale = key[: -len(INT8_SCALE)], tensors.pop(key)
        q = tensors.get(name)
        if q is None or q.dtype != torch.int8 or q.dim() != 2 or scale.shape != (q.shape[0],):
            got = "nothing" if q is None else f"{str(q.dtype).removeprefix('torch.')} {tuple(q.shape)}"
            raise ModelLoadError(f"{folder}: {key} {tuple(scale.shape)} is the row scale of an int8 matrix "
                                 f"{name}, which holds {got}")
        tensors[name] = q.float() * scale.float().unsqueeze(1)
    stray = [k for k, t in tensors.items() if t.dtype == torch.int8]
    if stray:
        raise ModelLoadError(f"{folder}: int8 tensor(s) without a row scale ({stray[0]}{INT8_SCALE}): {stray[:3]}")
    return tensors


def _expected_shapes(net: PreTrainedModel) -> dict[str, torch.Size]:
    shapes = {name: p.shape for name, p in net.state_dict().items()}
    if net.config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def load_config(folder: str | Path) -> tuple[PretrainedConfig, Layout]:
    """The transformers config of the model in `folder` (any supported layout), checked, and
    its layout; no weights are read (`ModelFacts.from_config` gives its facts)."""
    folder = Path(folder)
    raw = read_json(folder / "config.json")
    layout = detect_layout(raw)
    with _held_logs("transformers"):  # its warnings about bad values: check_config says it in one line
        try:
            config = layout.to_config(raw)
        except ModelLoadError:
            raise
        except Exception as exc:  # transformers' strict config checks raise their own error types
            raise ModelLoadError(f"{folder / 'config.json'}: a value is not valid ({' '.join(str(exc).split())})") from None
        check_config(config, folder / "config.json")
    return config, layout


def load_network(folder: str | Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The transformers network stored in `folder`, in any supported layout."""
    folder = Path(folder)
    config, layout = load_config(folder)
    tensors = _renamed(read_tensors(folder), layout, folder)
    _check_config_against_weights(config, tensors, folder)  # before building: 100000 layers would take hours
    with torch.device("meta"):
        net = network_class(config)(config)
    _check_names_and_shapes(tensors, _expected_shapes(net), folder)
    net.load_state_dict(tensors, strict=False, assign=True)
    if config.tie_word_embeddings:
        net.lm_head.weight = net.model.embed_tokens.weight
    # Non-persistent buffers (rotary inv_freq) are not in the file: rebuild them for real.
    net.model.rotary_emb = type(net.model.rotary_emb)(config=config)
    if dtype is not None:
        net = net.to(dtype)
    net.config.dtype = next(net.parameters()).dtype
    return net.eval()


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def _check_config_against_weights(config, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """A config.json that claims more layers than the weights hold fails before the network is
    built (building 100000 layers, even on the meta device, takes hours); the other mismatches
    are found by comparing names and shapes after building."""
    layers = {int(m.group(1)) for name in tensors if (m := _LAYER.match(name))}
    claimed = getattr(config, "num_hidden_layers", 0)
    if claimed > len(layers):
        raise ModelLoadError(f"{folder / 'config.json'} claims {claimed} layers but the weights hold {len(layers)}: "
                             "the config does not match the weights")


@contextlib.contextmanager
def _held_logs(name: str):
    """Hold what logger `name` would print, through its own handlers and those it propagates to
    (transformers propagates to the root logger when `CI` is set): printed at the end of the
    block, or dropped when it raises (the error says what the warnings were about)."""
    handlers: list[logging.Handler] = []
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:  # the chain `Logger.callHandlers` walks
        handlers += [h for h in logger.handlers if h not in handlers]
        logger = logger.parent if logger.propagate else None
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    for handler in handlers:
        handler.addFilter(hold)
    try:
        yield held
    except BaseException:
        held.clear()
        raise
    finally:
        for handler in handlers:
            handler.removeFilter(hold)
        for record in dict.fromkeys(held):  # each handler saw the record once
            for handler in handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)


def check_config(config, path: Path) -> None:
    """The values of a model config that transformers takes without checking: sizes are positive
    integers, heads divide the hidden size, token ids are ids; errors name `path` and the key."""
    family = getattr(config, "d3llm_family", None)
    if family not in FAMILIES:
        raise ModelLoadError(f"{path}: `d3llm_family` must be one of {', '.join(FAMILIES)}, got {family!r}")
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings")
    for key in sizes:
        value = getattr(config, key, None)
        if not is_positive_int(value):
            raise ModelLoadError(f"{path}: `{key}` must be a positive integer, got {value!r}")
    if config.hidden_size % config.num_attention_heads:
        raise ModelLoadError(f"{path}: `hidden_size` ({config.hidden_size}) must be divisible by the number of "
                             f"attention heads ({config.num_attention_heads})")
    if config.num_attention_heads % config.num_key_value_heads:
        raise ModelLoadError(f"{path}: the attention heads ({config.num_attention_heads}) must be divisible by "
                             f"`num_key_value_heads` ({config.num_key_value_heads})")
    eos = config.eos_token_id
    for key, value in (("eos_token_id", eos), ("mask_token_id", getattr(config, "mask_token_id", None)),
                       ("pad_token_id", getattr(config, "pad_token_id", None))):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is None:
                continue
            if isinstance(token, bool) or not isinstance(token, int):
                raise ModelLoadError(f"{path}: `{key}` must be an integer token id, got {token!r}")
            if not 0 <= token < config.vocab_size:
                raise ModelLoadError(f"{path}: the {key.removesuffix('_token_id')} token id {token} is outside the "
                                     f"model's {config.vocab_size} ids (`{key}`)")
    if eos is None or eos == []:
        raise ModelLoadError(f"{path}: `eos_token_id` is missing")
    if family != "ar" and getattr(config, "mask_token_id", None) is None:
        raise ModelLoadError(f"{path}: a {family} model needs `mask_token_id`")
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10_000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise ModelLoadError(f"{path}: `rope_theta` must be a positive number, got {theta!r}")


def _renamed(tensors: dict[str, torch.Tensor], layout: Layout, folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in tensors.items():
        hf_name = layout.to_hf_name(name)
        if hf_name is None:
            raise ModelLoadError(f"{folder}: tensor {name!r} has no place in the {layout.name} layout")
        out[hf_name] = tensor
    return out


def _check_names_and_shapes(tensors: dict, expected: dict, folder: Path) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - {"lm_head.weight"})
    if missing:
        raise ModelLoadError(f"{folder}: weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    if unexpected:
        raise ModelLoadError(f"{folder}: weights hold tensors the config does not define, e.g. {unexpected[:3]}")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise ModelLoadError(
                f"{folder}: tensor {name} has shape {tuple(tensors[name].shape)} but the config "
                f"says {tuple(shape)} (config.json does not match the weights)"
            )


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


# Files a trained model folder carries beside its weights (see d3llm.train.trainer).
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
        if net.config.d3llm_family not in ("llada", "dream"):
            raise D3llmError(f"`decode_block_size` is a LLaDA/Dream-style model's setting, not a "
                             f"{net.config.d3llm_family} model's (a block model decodes the blocks it was trained with)")
        if layout != "hf":
            raise D3llmError(f"`decode_block_size` is stored in the hf layout only (the official {layout} config has no "
                             "place for it)")
        if not is_positive_int(decode_block_size):
            raise D3llmError(f"`decode_block_size` must be a positive integer, got {decode_block_size!r}")
        setattr(net.config, DECODE_BLOCK_KEY, decode_block_size)
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
