"""Reading a checkpoint folder: safetensors only (no pickle), single file or sharded.

    net = load_network("path/to/folder")           # any layout in d3llm.models.layouts
    config, layout = load_config("path/to/folder") # config.json only, checked

Loading builds the network on the `meta` device and assigns the stored tensors, so an
8B checkpoint costs its weights' memory once, not twice. Int8 storage (written by
`d3llm.models.checkpoint.quantized`) is read back as float32. Every problem a user can cause
(missing files, a truncated or corrupted shard, names or shapes that do not match the
config) is a `ModelLoadError` that names the file and the tensor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PretrainedConfig, PreTrainedModel

from d3llm.errors import D3llmError, ModelLoadError
from d3llm.files import read_json as read_json_file
from d3llm.models.catalog import INT8_SCALE
from d3llm.models.layouts import Layout, detect_layout
from d3llm.models.lm import FAMILIES, is_positive_int, network_class

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
