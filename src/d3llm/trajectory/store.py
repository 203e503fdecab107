"""On-disk format of teacher trajectories (version 1): Parquet chunks, a merged file, a manifest.

    DIR/
      manifest.json            format, version, teacher, fingerprints, decode config, work list
      chunks/chunk-00012.parquet   the records of work chunk 12, written atomically (tmp + rename)
      trajectories.parquet     all chunks in order (the merge step); what `d3llm distill` reads

One row per prompt (Parquet columns; readable by pyarrow, pandas or `datasets.Dataset.from_parquet`):

| column       | type         | meaning                                                           |
|--------------|--------------|-------------------------------------------------------------------|
| `index`      | int64        | position in the work list (problems of each task, in order)       |
| `task`       | string       | task name                                                         |
| `prompt_ids` | list<int32>  | chat-formatted prompt token ids                                   |
| `final_ids`  | list<int32>  | the teacher's response canvas (`max_new_tokens` ids)              |
| `target_ids` | list<int32>  | the reference response + EOS, padded with EOS to the canvas       |
| `rank`       | list<int16>  | `rank[pos]` = step at which the teacher committed response `pos`  |
| `correct`    | bool         | the teacher's answer scored correct by the task                   |

The work list is fixed by the manifest (teacher, tasks and counts, split, seed), and chunks are
its consecutive slices, so a resumed or re-sharded run computes exactly the missing chunks:
no record is duplicated or lost, whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from d3llm.errors import D3llmError
from d3llm.files import claim_folder, read_json
from d3llm.models.lm import FAMILIES

FORMAT = "d3llm-trajectories"
VERSION = 1
MANIFEST = "manifest.json"
MERGED = "trajectories.parquet"
CHUNKS = "chunks"

SCHEMA = pa.schema([
    ("index", pa.int64()), ("task", pa.string()), ("prompt_ids", pa.list_(pa.int32())),
    ("final_ids", pa.list_(pa.int32())), ("target_ids", pa.list_(pa.int32())),
    ("rank", pa.list_(pa.int16())), ("correct", pa.bool_()),
])


class TrajectoryError(D3llmError):
    """A trajectory folder is missing, incomplete, damaged or does not match its use."""


def fingerprint(folder: Path) -> str:
    """Identity of a model folder without reading all its weights: config, tokenizer files and
    each safetensors file's header plus its first MiB of tensor data (sha256, 16 hex)."""
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "vocab.json", "merges.txt"):
        if (folder / name).is_file():
            digest.update(name.encode() + (folder / name).read_bytes())
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            digest.update(f.read(header_len + (1 << 20)))
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of a tokenizer: its vocabulary and special tokens (sha256, 16 hex)."""
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write_atomically(path: Path, write) -> None:
    """`write(tmp)` then rename onto `path`: a kill leaves the old file or the whole new one."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def claim_out(folder: Path, overwrite: bool = False) -> None:
    """Refuse (unless `overwrite`) a folder that holds a trajectory file name but no manifest of
    ours: a user's trajectories.parquet is not replaced silently."""
    def ours(path: Path) -> bool:
        try:
            return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
        except (OSError, ValueError, RecursionError, AttributeError):
            return False

    claim_folder(folder, "--out", overwrite, ours, (MANIFEST, MERGED, CHUNKS), "`d3llm trajectories`")


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write the manifest, or check that the one already there describes the same work."""
    file = folder / MANIFEST
    if file.is_file():
        old = read_manifest(folder)
        keys = ("teacher_fingerprint", "work", "decode_config", "chunk_size")
        changed = [k for k in keys if old.get(k) != manifest.get(k)]
        if changed:
            raise TrajectoryError(
                f"{folder} holds trajectories made with different settings ({', '.join(changed)}); "
                "use another --out (nothing was overwritten)"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(file, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))


def read_manifest(folder: Path) -> dict:
    file = Path(folder) / MANIFEST
    if not file.is_file():
        raise TrajectoryError(f"{folder} has no {MANIFEST}: not a trajectory folder (made by `d3llm trajectories`)")
    try:
        manifest = read_json(file, max_bytes=64 << 20)  # a regular file; deep nesting, long ints: one line
    except D3llmError as exc:
        raise TrajectoryError(str(exc)) from None
    if not isinstance(manifest, dict):
        raise TrajectoryError(f"{file} must hold a JSON object, not a {type(manifest).__name__}")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise TrajectoryError(
            f"{file}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"this d3llm reads {FORMAT!r} version {VERSION}"
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise TrajectoryError(f"{file}: {problem} (the file is damaged or was not written by `d3llm trajectories`)")
    return manifest


def _is_int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with the fields a manifest must hold, or None."""
    for key in ("teacher", "teacher_fingerprint", "tokenizer_fingerprint"):
        if not isinstance(manifest.get(key), str):
            return f"`{key}` must be a string, got {manifest.get(key)!r}"
    if manifest.get("family") not in FAMILIES:
        return f"`family` must be one of {', '.join(FAMILIES)}, got {manifest.get('family')!r}"
    work = manifest.get("work")
    if not isinstance(work, dict):
        return f"`work` must be an object (tasks, split, seed), got {work!r}"
    tasks = work.get("tasks")
    if not isinstance(tasks, dict) or not tasks or not all(
            isinstance(k, str) and _is_int(v, 1) for k, v in tasks.items()):
        return f"`work.tasks` must map task names to positive counts, got {tasks!r}"
    if not isinstance(work.get("split"), str) or not _is_int(work.get("seed"), -(2**63)):
        return f"`work.split` must be a string and `work.seed` an integer, got {work.get('split')!r}, {work.get('seed')!r}"
    if not _is_int(manifest.get("num_records"), 0):
        return f"`num_records` must be an integer >= 0, got {manifest.get('num_records')!r}"
    if not _is_int(manifest.get("chunk_size"), 1):
        return f"`chunk_size` must be an integer >= 1, got {manifest.get('chunk_size')!r}"
    decode = manifest.get("decode_config")
    if not isinstance(decode, dict) or not _is_int(decode.get("max_new_tokens"), 1):
        return f"`decode_config` must be an object with a positive `max_new_tokens`, got {decode!r}"
    return None


def chunk_path(folder: Path, chunk: int) -> Path:
    return folder / CHUNKS / f"chunk-{chunk:05d}.parquet"


def write_chunk(folder: Path, chunk: int, rows: list[dict]) -> None:
    """Write one chunk's records atomically: a kill leaves either the whole file or none."""
    path = chunk_path(folder, chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    _write_atomically(path, lambda tmp: pq.write_table(table, tmp))


def read_table(path: Path, expected_rows: int | None = None) -> pa.Table:
    """A Parquet file of records, with a clear error when it is damaged or short."""
    try:
        table = pq.read_table(path, schema=SCHEMA)
    except (pa.ArrowException, OSError) as exc:
        raise TrajectoryError(f"{path} is damaged or truncated ({exc}); delete it and rerun the command") from None
    if expected_rows is not None and table.num_rows != expected_rows:
        raise TrajectoryError(f"{path} holds {table.num_rows} records, expected {expected_rows}")
    return table


def chunk_sizes(manifest: dict) -> list[int]:
    total, size = manifest["num_records"], manifest["chunk_size"]
    return [min(size, total - start) for start in range(0, total, size)]


def missing_chunks(folder: Path, manifest: dict) -> list[int]:
    return [c for c in range(len(chunk_sizes(manifest))) if not chunk_path(folder, c).is_file()]


def merge(folder: Path) -> pa.Table:
    """Concatenate every chunk (in order, each checked) into trajectories.parquet."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    missing = missing_chunks(folder, manifest)
    if missing:
        raise TrajectoryError(
            f"{folder}: {len(missing)} of {len(chunk_sizes(manifest))} chunks are missing "
            f"(first: {chunk_path(folder, missing[0]).name}); rerun the same `d3llm trajectories` command to finish them"
        )
    tables = [read_table(chunk_path(folder, c), n) for c, n in enumerate(chunk_sizes(manifest))]
    merged = pa.concat_tables(tables)
    _write_atomically(folder / MERGED, lambda tmp: pq.write_table(merged, tmp))
    return merged


def load(folder: Path, keep: str = "correct") -> tuple[list[dict], dict]:
    """The merged records (all, or only those the teacher got right) and the manifest."""
    if keep not in ("all", "correct"):
        raise TrajectoryError(f"`keep` must be 'all' or 'correct', got {keep!r}")
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not (folder / MERGED).is_file():
        merge(folder)  # errors name the missing chunks
    table = read_table(folder / MERGED, manifest["num_records"])
    rows = table.to_pylist()
    if keep == "correct":
        rows = [r for r in rows if r["correct"]]
    if not rows:
        raise TrajectoryError(f"{folder}: no trajectories to train on (keep={keep!r}, {table.num_rows} records)")
    return rows, manifest
