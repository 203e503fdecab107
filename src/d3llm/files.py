"""Files we write and read back, handled so that a user's data and a run survive anything.

Three promises (docs/files.md):

* **Checked before work.** `check_out_file` / `check_out_folder` find the nearest existing folder
  above an output path and write (then remove) a probe file there: root passes `os.access`
  everywhere, so only a real write tells /proc, a full or read-only disk, or a symlink loop
  apart. An existing output must be a regular file (or a folder, for folders): /dev/full fails
  here, in one line, not after an hour of work.
* **Nothing of the user's replaced.** An output that exists is replaced only when it is the
  command's own earlier output (`ours(path)` says so, or the folder holds the command's marker
  file) or `overwrite` is given.
* **Crash-safe.** `write_atomic` writes a temporary file beside the target, fsyncs it, renames
  it over the target and fsyncs the folder: a kill at any point leaves the old file or the whole
  new one. `append_line` rewrites the file that way (our append-only logs are small).
  `read_jsonl` drops a last line cut short by a crash of a plain append (a log not written
  this way), and names the file in one line for any other damage.

Every failure is a `D3llmError` naming the option and the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from d3llm.errors import D3llmError


def _nearest_folder(path: Path, option: str) -> Path:
    """The nearest existing folder above `path` (not `path` itself); errors for a file in the
    way, a symlink loop, a dangling link or an unreadable step."""
    for above in Path(os.path.abspath(path)).parents:
        try:
            mode = os.stat(above).st_mode
        except FileNotFoundError:
            if os.path.lexists(above):
                raise D3llmError(f"{option} {path}: {above} is a broken symbolic link") from None
            continue
        except OSError as exc:
            raise D3llmError(f"{option} {path}: {above}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(mode):
            raise D3llmError(f"{option} {path}: {above} is a file, not a folder; choose another {option}")
        return above
    raise D3llmError(f"{option} {path}: no existing folder above it")


def _probe(folder: Path, path: Path, option: str) -> None:
    """Create, write and remove a small file in `folder`: the only test root cannot pass by rank."""
    try:
        fd, name = tempfile.mkstemp(prefix=".d3llm-probe-", dir=folder)
        try:
            os.write(fd, b"d3llm")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise D3llmError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})") from None


def _kind(path: Path, option: str) -> int | None:
    """st_mode of `path` (following links), None when nothing is there."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            raise D3llmError(f"{option} {path} is a broken symbolic link") from None
        return None
    except OSError as exc:
        raise D3llmError(f"{option} {path}: {exc.strerror or exc}") from None


def check_out_file(path: Path, option: str, overwrite: bool = False,
                   ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse, before any work, an output file that cannot be written or would replace a file
    that is not the command's own earlier output (`ours`), unless `overwrite`."""
    path = Path(path)
    mode = _kind(path, option)
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise D3llmError(f"{option} {path} is a folder; give a file path")
        if not stat.S_ISREG(mode):
            raise D3llmError(f"{option} {path} is not a regular file (a device, pipe or socket); give a file path")
        if not overwrite and not (ours is not None and ours(path)):
            raise D3llmError(f"{option} {path} exists and was not written by this command; pass --overwrite "
                             f"to replace it, or choose another {option}")
    folder = path.parent if mode is not None else _nearest_folder(path, option)
    _probe(folder, path, option)


def check_out_folder(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be one or cannot be written."""
    path = Path(path)
    mode = _kind(path, option)
    if mode is not None and not stat.S_ISDIR(mode):
        raise D3llmError(f"{option} {path} exists and is not a folder; choose another {option}")
    _probe(path if mode is not None else _nearest_folder(path, option), path, option)


def claim_folder(path: Path, option: str, overwrite: bool, ours: Callable[[Path], bool],
                 names: Iterable[str] | None = None, what: str = "this command") -> None:
    """Refuse an output folder holding files that are not `what`'s own output, unless
    `overwrite`. `ours(folder)`: the folder holds `what`'s earlier output (its marker file);
    `names`: the entries `what` writes (None: any entry would clash)."""
    path = Path(path)
    if overwrite or not path.is_dir() or ours(path):
        return
    wanted = None if names is None else set(names)
    clashes = sorted(e.name for e in path.iterdir()
                     if (wanted is None or e.name in wanted) and not is_leftover(e.name))
    if clashes:
        listed = ", ".join(clashes[:3]) + (", ..." if len(clashes) > 3 else "")
        raise D3llmError(f"{option} {path} holds files {what} did not write ({listed}); pass --overwrite "
                         f"to replace them, or choose another {option}")


TEMP_MARK = ".d3llm-tmp-"  # in the name of every temporary file or folder we write


def is_leftover(name: str) -> bool:
    """A temporary file or folder of ours, left by a kill before its rename."""
    return name.startswith(".") and TEMP_MARK in name


def remove_leftovers(folder: Path) -> None:
    """Delete what a killed write left in `folder` (ours by name: `TEMP_MARK`)."""
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if is_leftover(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` so that a kill at any moment leaves the old file or the new one
    (and at worst a temporary `.NAME.d3llm-tmp-*` beside it, which `remove_leftovers` clears)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_line(path: Path, line: str) -> None:
    """Add one line to a small log file, atomically (the whole file is rewritten). A last line
    without its newline was cut short by a crash (of a plain append): it is dropped."""
    path = Path(path)
    old = read_text(path) if path.is_file() else ""
    if old and not old.endswith("\n"):
        old = old[: old.rfind("\n") + 1]
    write_atomic(path, old + line.rstrip("\n") + "\n")


def read_jsonl(path: Path, fix: str) -> list[dict]:
    """The JSON objects of a log file, one a line. A last line cut short (no newline: a crash
    while appending) is dropped; any other damage raises, naming the file and `fix`."""
    path = Path(path)
    if not path.is_file():
        return []
    text = read_text(path)
    rows = []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if not isinstance(row, dict):
            if number == len(lines):  # the last line, without its newline: cut short by a kill
                break
            raise D3llmError(f"{path} is damaged (line {number} is not a JSON object); {fix}")
        rows.append(row)
    return rows


def read_text(path: Path, what: str | None = None, max_bytes: int = 64 << 20) -> str:
    """A regular file's text (UTF-8), at most `max_bytes`; a FIFO, device or folder, a bigger
    file or bytes that are not UTF-8 raise, naming the file."""
    path = Path(path)
    name = what or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except OSError as exc:
        raise D3llmError(f"{name}: cannot read {path} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise D3llmError(f"{name}: {path} is not a regular file")
        if info.st_size > max_bytes:
            raise D3llmError(f"{name}: {path} is {info.st_size} bytes, more than the {max_bytes} allowed")
        data = f.read(max_bytes + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise D3llmError(f"{name}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask



def read_json(path: Path, what: str | None = None, max_bytes: int = 64 << 20) -> object:
    """A regular file's JSON value; damage of any kind (a FIFO, bad UTF-8, bad JSON, nesting
    deeper than Python's stack, an int too long to convert) raises one `D3llmError`."""
    text = read_text(path, what, max_bytes)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError and int-digit limits
        reason = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())
        raise D3llmError(f"{what + ' ' if what else ''}{path} cannot be read as JSON (not valid JSON: {reason})") from None


def first_json_line(path: Path) -> object:
    """The JSON value of a file's first line (None when it has none): enough to recognise a
    JSON-lines file we wrote, without reading a big one."""
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 20)
        return json.loads(line)
    except (OSError, ValueError, RecursionError):
        return None


SAFETENSORS_MAX_HEADER = 100 << 20  # the safetensors library's own limit


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size (no tensor data
    is read): a header length past the end, a truncated file, or offsets outside the data raise
    one `D3llmError`, before anything is allocated for them."""
    path = Path(path)
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:  # a FIFO: no block
            size = os.fstat(f.fileno()).st_size
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise D3llmError(f"{path} is not a regular file")
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > min(size - 8, SAFETENSORS_MAX_HEADER):
                raise D3llmError(f"{path} is truncated or not a safetensors file (header of {length} bytes, "
                                 f"file of {size})")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise D3llmError(f"{path} cannot be read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError):
        raise D3llmError(f"{path} is corrupted (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise D3llmError(f"{path} is corrupted (its header is not a JSON object)")
    try:
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (TypeError, KeyError, IndexError):
        ends = [None]
    if any(type(e) is not int for e in ends) or max(ends, default=0) != size - 8 - length:
        raise D3llmError(f"{path} is truncated or corrupted (its tensors do not end where the file does)")
    return header


class YamlLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader with YAML 1.2 floats (`5e-5` is a number, not the string PyYAML's
    YAML 1.1 rules make it) and a bound on the document's size with aliases expanded: a
    "billion laughs" document (a few lines whose aliases nest to 10^9 values) or a recursive
    one is refused before anything walks it."""

    max_nodes = 1_000_000

    def construct_document(self, node):
        _check_expanded_size(node, self.max_nodes)
        return super().construct_document(node)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF|nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def load_yaml(text: str):
    """YAML text to Python values through `YamlLoader`; every problem is a `yaml.YAMLError`."""
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except ValueError as exc:  # an int of more than 4300 digits
        raise yaml.YAMLError(" ".join(str(exc).split())) from None


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(root, limit: int) -> None:
    """Count the nodes of `root` with every alias expanded (each shared node once per use,
    computed once), without recursion; raise over `limit` or on a cycle."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # the nodes on the path from the root: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > limit:
                raise yaml.YAMLError(f"the document expands to more than {limit} values (aliases); refused")
            continue
        if key in sizes:
            continue
        if key in open_:
            raise yaml.YAMLError("the document refers to itself (a recursive alias); refused")
        open_.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
