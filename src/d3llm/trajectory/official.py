"""The d3LLM authors' trajectory datasets, to and from d3llm trajectory folders.

    import_official("d3LLM/trajectory_data_llada_32", "runs/traj", teacher="GSAI-ML/LLaDA-8B-Instruct")
    export_official("runs/traj", "runs/traj-official")

Their format (hao-ai-lab/d3LLM `d3llm/d3llm_{LLaDA,DREAM}/distill_1_data_prepare/`, the
`*_generate_multinode.py` merge step): a `datasets` folder written by `save_to_disk` (on the Hub
also as Parquet files), one row per prompt:

| column           | type              | meaning                                                        |
|------------------|-------------------|----------------------------------------------------------------|
| `idx`            | int               | row of the prompt dataset                                      |
| `question`       | string            | the prompt text                                                |
| `prompt_ids`     | list<int>         | its token ids (P of them)                                      |
| `trajectory`     | list<list<int>>   | the whole sequence (P + G ids) after each decode step, in order |
| `final_output`   | list<int>         | the whole sequence at the end                                  |
| `generated_text` | string            | `final_output` decoded, special tokens skipped                 |
| `llm_answer`     | string or null    | the answer extracted from it                                   |
| `gt_answer`      | string            | the reference answer                                           |
| `is_correct`     | bool              | the two agree (their correctness filter)                       |

Import: `rank[p]` = the first snapshot at which response column `p` is no longer the mask id,
made a strict order (a step that committed several columns orders them left to right; their
published sets commit one per step, steps = canvas). The response targets are the teacher's own
final responses (their training pairs each trajectory with the response that produced it), and
`correct` is `is_correct`, so `d3llm distill` (`keep: correct`, the default) trains on the rows
they keep. Export writes the same columns back; a step is one rank, so the export of an import
gives back the imported trajectories when they committed one column per step.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm
from datasets.utils import logging as ds_logging
from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from d3llm.errors import D3llmError
from d3llm.models.reading import load_config
from d3llm.models.hub import parse_hub_id, snapshot
from d3llm.models.lm import ModelFacts
from d3llm.models.loading import resolve_model
from d3llm.models.tokenizer import load_tokenizer
from d3llm.tasks import get_task
from d3llm.trajectory import store
from d3llm.version import code_version

log = logging.getLogger(__name__)

COLUMNS = ("idx", "question", "prompt_ids", "trajectory", "final_output", "generated_text", "llm_answer",
           "gt_answer", "is_correct")
REQUIRED = ("idx", "prompt_ids", "trajectory", "final_output", "is_correct")
BATCH = 64  # rows read at a time: a row of theirs holds G x (P + G) ids (about 0.1M for G = 256)


class OfficialFormatError(store.TrajectoryError):
    """A dataset that is not in the authors' trajectory format, or not consistent with itself."""


# --- reading their dataset ---------------------------------------------------------------


def source_folder(source: str) -> Path:
    """A local folder as it is; a hub id `ORG/NAME[@REV]` that is not a folder: its dataset snapshot."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise OfficialFormatError(f"{source} is a file; give the dataset's folder (save_to_disk) or a hub id")
        return path
    hub_id = parse_hub_id(source)
    if hub_id is None:
        raise OfficialFormatError(f"no folder or hub dataset id (ORG/NAME) named {source!r}")
    return snapshot(hub_id, repo_type="dataset", what="dataset")


def read_rows(folder: Path) -> tuple[int, Iterator[dict]]:
    """(number of rows, batches as column -> list) of a `save_to_disk` folder or of Parquet files."""
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        data = datasets.load_from_disk(str(folder))
        if isinstance(data, datasets.DatasetDict):
            if "train" not in data:
                raise OfficialFormatError(f"{folder}: a DatasetDict without a 'train' split ({', '.join(data)})")
            data = data["train"]
        _check_columns(data.column_names, folder)
        return data.num_rows, data.iter(batch_size=BATCH)
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise OfficialFormatError(f"{folder} holds neither a `datasets` folder (state.json) nor Parquet files")
    for file in files:
        _check_columns(pq.ParquetFile(file).schema_arrow.names, file)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return total, (b.to_pydict() for f in files for b in pq.ParquetFile(f).iter_batches(batch_size=BATCH))


def _check_columns(names: list[str], where: Path) -> None:
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise OfficialFormatError(f"{where}: not the authors' trajectory format, missing column(s) "
                                  f"{', '.join(missing)} (has {', '.join(names)})")


def rank_from_snapshots(prompt: list[int], snapshots: list[list[int]], final: list[int], mask_id: int,
                        idx: object) -> list[int]:
    """Our rank vector of one of their rows (see the module docstring); `idx` names it in errors."""
    P, total = len(prompt), len(final)
    if total <= P or list(final[:P]) != list(prompt):
        raise OfficialFormatError(f"row idx={idx}: final_output does not start with prompt_ids or has no response")
    lengths = {len(step) for step in snapshots}
    if not snapshots or lengths != {total}:
        raise OfficialFormatError(f"row idx={idx}: every trajectory step must hold the whole sequence "
                                  f"({total} ids), got steps of {sorted(lengths)} ids")
    steps = np.asarray(snapshots, dtype=np.int64)  # (S, P + G)
    response, answer = steps[:, P:] != mask_id, np.asarray(final[P:])
    if (answer == mask_id).any() or not response[-1].all() or (steps[-1, P:] != answer).any():
        raise OfficialFormatError(f"row idx={idx}: the last trajectory step is not the finished final_output")
    if (response[:-1] & ~response[1:]).any():
        raise OfficialFormatError(f"row idx={idx}: a committed token is masked again in a later step")
    first = response.argmax(axis=0)  # (G,) step at which each column was committed
    order = np.lexsort((np.arange(first.size), first))  # by step, then left to right
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank.tolist()


# --- import ------------------------------------------------------------------------------


def _teacher(teacher: str):
    folder = resolve_model(teacher)
    facts = ModelFacts.from_config(load_config(folder)[0])
    if facts.mask_token_id is None:
        raise D3llmError(f"--teacher {teacher}: an autoregressive model has no trajectories (no mask token)")
    return folder, facts, load_tokenizer(folder)


def import_official(source: str, out: str | Path, teacher: str, chunk_size: int = 1024, progress: bool = True) -> Path:
    """Convert the authors' dataset `source` (folder or hub id) into a trajectory folder `out`
    for `teacher` (the model that rolled them out; its mask id reads the snapshots, and
    `d3llm distill --teacher` must be the same). Run again, it finishes a killed import.
    `progress`: a progress bar on stderr, as `d3llm trajectories` rollouts show."""
    if chunk_size < 1:
        raise D3llmError(f"`chunk_size` (--chunk-size) must be >= 1, got {chunk_size}")
    out = Path(out)
    folder, facts, tokenizer = _teacher(teacher)
    src = source_folder(source)
    total, batches = read_rows(src)
    if total == 0:
        raise OfficialFormatError(f"{source}: the dataset has no rows")
    first = next(batches)
    canvas = len(first["final_output"][0]) - len(first["prompt_ids"][0])
    name = _task_name(source)
    manifest = {
        "format": store.FORMAT, "version": store.VERSION, "teacher": str(teacher),
        "teacher_fingerprint": store.fingerprint(folder), "tokenizer_fingerprint": store.tokenizer_fingerprint(tokenizer),
        "family": facts.family, "work": {"tasks": {name: total}, "split": "train", "seed": 0},
        "num_records": total, "chunk_size": chunk_size,
        "decode_config": {"max_new_tokens": canvas, "method": "imported", "tokens_per_step": 1},
        "imported_from": {"source": str(source), "format": "d3llm-official", "targets": "teacher responses"},
        "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    store.write_manifest(out, manifest)
    rows, chunk, done = [], 0, 0
    bar = tqdm(total=total, unit="row", desc="importing trajectories", disable=not progress)
    for batch in _chain(first, batches):
        bar.update(len(batch["idx"]))
        for i in range(len(batch["idx"])):
            if not store.chunk_path(out, chunk).is_file():
                rows.append(_record(batch, i, done, canvas, facts.mask_token_id, name))
            done += 1
            if done % chunk_size == 0 or done == total:
                if rows:
                    store.write_chunk(out, chunk, rows)
                rows, chunk = [], chunk + 1
    bar.close()
    merged = store.merge(out)
    log.info("imported %d trajectories (%d correct) into %s", merged.num_rows,
             sum(merged.column("correct").to_pylist()), out)
    return out


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def _task_name(source: str) -> str:
    return Path(source.split("@")[0].rstrip("/")).name or "imported"


def _record(batch: dict, i: int, index: int, canvas: int, mask_id: int, task: str) -> dict:
    prompt, final, idx = list(batch["prompt_ids"][i]), list(batch["final_output"][i]), batch["idx"][i]
    if len(final) - len(prompt) != canvas:
        raise OfficialFormatError(f"row idx={idx}: response of {len(final) - len(prompt)} ids, the first row's has "
                                  f"{canvas}; d3llm trajectories share one canvas length")
    rank = rank_from_snapshots(prompt, batch["trajectory"][i], final, mask_id, idx)
    response = final[len(prompt):]
    return {"index": index, "task": task, "prompt_ids": prompt, "final_ids": response,
            "target_ids": response, "rank": rank, "correct": bool(batch["is_correct"][i])}


# --- export ------------------------------------------------------------------------------


def export_official(folder: str | Path, out: str | Path, teacher: str | None = None) -> Path:
    """Write trajectory folder `folder` as the authors' dataset (`save_to_disk`) into `out`, a
    new or empty folder. `teacher` (default: the manifest's) gives the tokenizer and mask id."""
    folder, out = Path(folder), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise D3llmError(f"--out {out} exists and is not an empty folder; choose a new one (nothing was written)")
    manifest = store.read_manifest(folder)
    if not (folder / store.MERGED).is_file():
        store.merge(folder)  # errors name the missing chunks
    table = store.read_table(folder / store.MERGED, manifest["num_records"])  # Arrow: compact, read in batches
    _, facts, tokenizer = _teacher(teacher or manifest["teacher"])
    if store.tokenizer_fingerprint(tokenizer) != manifest["tokenizer_fingerprint"]:
        raise D3llmError(f"{folder} was made with another tokenizer than {teacher or manifest['teacher']}'s")
    problems = _problems(manifest)

    def generate():
        for batch in table.to_batches(max_chunksize=BATCH):
            for row in batch.to_pylist():
                yield _official_row(row, problems.get(row["index"]), tokenizer, facts.mask_token_id)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with _quiet_datasets():
            data = datasets.Dataset.from_generator(generate, cache_dir=str(staging / "cache"))
            data.save_to_disk(str(staging / "data"))
        out.mkdir(exist_ok=True)
        for file in (staging / "data").iterdir():
            file.rename(out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _problems(manifest: dict) -> dict:
    """index -> Problem of a rollout made by `d3llm trajectories` ({} for an imported set)."""
    if "imported_from" in manifest:
        return {}
    work, found = manifest["work"], []
    for name, n in work["tasks"].items():
        found += get_task(name).problems(work["split"], n, work["seed"])
    return dict(enumerate(found))


def _official_row(row: dict, problem, tokenizer, mask_id: int) -> dict:
    prompt, final, rank = row["prompt_ids"], row["final_ids"], np.asarray(row["rank"])
    response = np.asarray(final)
    snapshots = [prompt + np.where(rank <= step, response, mask_id).tolist() for step in range(len(final))]
    text = tokenizer.decode(prompt + final, skip_special_tokens=True)
    answer = get_task(problem.task).extract_answer(tokenizer.decode(final, skip_special_tokens=True)) if problem else None
    return {"idx": row["index"], "question": problem.prompt if problem else tokenizer.decode(prompt),
            "prompt_ids": prompt, "trajectory": snapshots, "final_output": prompt + final,
            "generated_text": text, "llm_answer": answer, "gt_answer": problem.answer if problem else None,
            "is_correct": row["correct"]}


class _quiet_datasets:
    """datasets' progress bars off while we write (a library prints no bars; the CLI may)."""

    def __enter__(self):
        self._bars = not are_progress_bars_disabled()
        self._level = ds_logging.get_verbosity()
        disable_progress_bars()
        ds_logging.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        if self._bars:
            enable_progress_bars()
        ds_logging.set_verbosity(self._level)


__all__ = ["COLUMNS", "OfficialFormatError", "export_official", "import_official", "rank_from_snapshots", "read_rows"]
