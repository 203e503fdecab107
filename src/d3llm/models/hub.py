"""Hugging Face Hub ids as model (and dataset) names: `ORG/NAME[@REVISION]` -> a local folder.

    parse_hub_id("d3LLM/d3LLM_LLaDA@main")   # HubId("d3LLM/d3LLM_LLaDA", "main"), or None
    snapshot("d3LLM/d3LLM_LLaDA")             # the cached snapshot folder, downloaded if needed

`d3llm.models.loading.resolve_model` calls `snapshot` for a name that is neither a bundled
model nor an existing folder, so every command, the Python API, the server, lm-eval's
`model_args`, `init_from` and `--teacher` accept hub ids.

Only the files d3llm loads are fetched (config, safetensors weights and their index,
tokenizer files, chat template): never `*.py` (no remote code is run, the official layouts
are read by d3llm's own loaders) nor pickle weights. huggingface_hub owns the cache and its
settings: `HF_HOME` / `HF_HUB_CACHE` (where), `HF_TOKEN` (gated or private repos),
`HF_HUB_OFFLINE=1` (no network: the cached snapshot of the revision, read from
`refs/REVISION` or `snapshots/COMMIT`), and its progress bars (`HF_HUB_DISABLE_PROGRESS_BARS`).
Read at call time, so a test or a caller may set them after import.

Every failure is a one-line `ModelLoadError` that names the id and what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)

from d3llm.errors import ModelLoadError

# What d3llm reads from a model repo (d3llm.models.reading and .tokenizer); nothing else.
MODEL_FILES = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "provenance.json",
)
# A dataset repo: `save_to_disk` folders (arrow files and their json records) or Parquet files, at any
# depth (huggingface_hub matches patterns with fnmatch, whose `*` spans folders).
DATASET_FILES = ("*.arrow", "*.parquet", "*dataset_info.json", "*state.json", "*dataset_dict.json")

# Hub repo names: letters, digits, `-`, `_`, `.` (huggingface_hub's own rule, without `--`/`..`);
# a revision is a branch, tag or commit (no spaces, no `..`).
_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,200}))?")


@dataclass(frozen=True)
class HubId:
    repo_id: str  # ORG/NAME
    revision: str | None = None  # branch, tag or commit; None: the repo's default branch

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_id(text: str) -> HubId | None:
    """`ORG/NAME` or `ORG/NAME@REVISION` as a `HubId`; None when `text` cannot be one."""
    match = _ID.fullmatch(text.strip())
    if match is None or "--" in match["repo"] or ".." in text:
        return None
    return HubId(match["repo"], match["rev"])


def hub_id_of_folder(folder: Path) -> str | None:
    """`ORG/NAME` of a folder inside a hub cache (`.../models--ORG--NAME/snapshots/COMMIT`), else None."""
    parts = Path(folder).absolute().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        org, _, name = parts[-3].removeprefix("models--").partition("--")
        return f"{org}/{name}" if org and name else None
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).strip().upper() in (
        "1", "ON", "YES", "TRUE")


def cache_dir() -> Path:
    """The hub cache huggingface_hub uses, from the environment as it is now."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def snapshot(hub_id: HubId | str, repo_type: str = "model", what: str = "model") -> Path:
    """The local folder of `hub_id` (downloaded into the hub cache unless already there)."""
    given, hub_id = hub_id, parse_hub_id(hub_id) if isinstance(hub_id, str) else hub_id
    if hub_id is None:
        raise ModelLoadError(f"not a Hugging Face hub id (ORG/NAME[@REVISION]): {given!r}")
    offline, where = _offline(), cache_dir()
    try:
        folder = snapshot_download(
            hub_id.repo_id, repo_type=repo_type, revision=hub_id.revision, cache_dir=where,
            local_files_only=offline, allow_patterns=list(MODEL_FILES if repo_type == "model" else DATASET_FILES))
    except GatedRepoError:
        raise ModelLoadError(f"{what} {hub_id} is gated on the Hugging Face Hub: accept its terms on "
                             f"https://huggingface.co/{hub_id.repo_id} and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no {what} {hub_id.repo_id!r} on the Hugging Face Hub (or it is private: set "
                             "HF_TOKEN); check the name") from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"{what} {hub_id.repo_id} has no revision {hub_id.revision!r} on the Hugging Face "
                             "Hub") from None
    except LocalEntryNotFoundError as exc:
        incomplete = "incomplete" in str(exc)
        why = ("its cached copy is incomplete" if incomplete else "it is not in the Hugging Face cache")
        how = ("HF_HUB_OFFLINE is set: unset it (or download it on a machine with network, "
               f"`hf download {hub_id.repo_id}`, and copy {where})" if offline else
               "the Hub cannot be reached: check the network, or set HF_HOME / HF_HUB_CACHE to a cache that "
               "holds it")
        raise ModelLoadError(f"{what} {hub_id}: {why} ({where}); {how}") from None
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"{what} {hub_id}: the Hugging Face Hub answered "
                             f"{' '.join(str(exc).split())[:200]}") from None
    except OSError as exc:  # a cache folder that cannot be written, a disk that is full
        raise ModelLoadError(f"{what} {hub_id}: cannot download into {where} ({exc.strerror or exc}); "
                             "set HF_HOME or HF_HUB_CACHE to a writable folder") from None
    return Path(folder)
