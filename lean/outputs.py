"""Which directories lean may replace: only one it can prove it wrote, holding nothing else.

Every directory lean writes (a step's output, a `lean bench` run, a `lean optimize` run) carries a
marker, `.lean-output.json`: a random id and the entries lean wrote there. The directory's own
record (lean.json, results.json or run.json) carries the same id as `output_id`. A file name alone
proves nothing (a user may well have a results.json or a lean.json); a random id written twice by
lean does. `--overwrite` replaces a directory only when its marker is there and valid, its record
agrees with it, and it holds nothing the marker does not list (besides lean's own temporary and lock
files), so a user's file dropped into an output, or a home directory with a stray lean.json, is
never removed. Outputs of older lean versions have no marker and are refused with a line saying so.

    why = why_not_replaceable(path)   # None, or the reason (a clause: "holds no ...")
    mark(path, ["results.json", "logs/"], record="results.json")   # an entry ending in "/" covers its tree
    seal(tmp)                          # a finished step directory: every path in it listed, id in lean.json
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterable

from lean.errors import LeanError

MARKER = ".lean-output.json"
_ID = re.compile(r"[0-9a-f]{32}")
_LOCK_SUFFIX = ".lean-lock"  # lean.locks.LOCK_SUFFIX (not imported: this module stays free of lean's others)


def new_id() -> str:
    return secrets.token_hex(16)


def read_marker(path: str | os.PathLike) -> dict | None:
    """The directory's marker when it is one lean wrote (an object with a 32-hex id and a list of entries), else None."""
    try:
        data = json.loads(Path(path, MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not _ID.fullmatch(data["id"]):
        return None
    entries, record = data.get("entries"), data.get("record")
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return None
    if record is not None and (not isinstance(record, str) or record not in entries):
        return None
    return data


def mark(path: str | os.PathLike, entries: Iterable[str], record: str | None = None,
         output_id: str | None = None) -> str:
    """Write the marker into `path` (a directory lean writes in place) and return its id.

    `entries` are the paths lean writes there (relative; one ending in "/" covers its whole tree);
    `record` is the JSON file among them that carries the same id as `output_id` (its writer puts it there)."""
    output_id = output_id or new_id()
    entries = sorted(set(entries) | ({record} if record else set()))
    text = json.dumps({"lean_output": 1, "id": output_id, "record": record, "entries": entries}, indent=1)
    tmp = Path(path, f".{MARKER}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, Path(path, MARKER))
    return output_id


def seal(path: str | os.PathLike, record: str | None = "lean.json") -> str:
    """Mark a finished directory (a step's output, before it is renamed into place): every file and folder
    in it is listed, and its `record` (lean.json; None: none), when there, carries the id. A copy of a
    directory lean wrote keeps its id and record, so its lean.json stays byte for byte the original's."""
    root = Path(path)
    earlier = read_marker(root)
    kept = earlier.get("record") if earlier else None
    if kept and (_json_object(root / kept) or {}).get("output_id") == earlier["id"]:
        output_id, record = earlier["id"], kept
    else:
        output_id = new_id()
        data = _json_object(root / record) if record else None
        if data is None:
            record = None
        else:
            data["output_id"] = output_id
            (root / record).write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
    entries = [str(p.relative_to(root)) for p in root.rglob("*") if p != root / MARKER]
    return mark(root, entries, record, output_id)


def _json_object(file: Path) -> dict | None:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _lean_temp(name: str, siblings: set[str]) -> bool:
    """A temporary or lock file lean keeps beside an entry it lists (`.NAME.tmp`, `.NAME.tmp-…`, `.NAME.lean-lock`)."""
    if not name.startswith("."):
        return False
    for suffix in (".tmp", _LOCK_SUFFIX):
        if name.endswith(suffix) and name[1:-len(suffix)] in siblings:
            return True
    base, sep, _ = name[1:].rpartition(".tmp-")
    return bool(sep) and base in siblings


def unlisted(path: str | os.PathLike, entries: Iterable[str]) -> list[str]:
    """Paths under `path` (relative) that `entries` does not cover, besides the marker and lean's temporary files."""
    root = Path(path)
    exact = {e for e in entries if not e.endswith("/")}
    trees = {e.rstrip("/") for e in entries if e.endswith("/")}
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder).relative_to(root)
        listed = {Path(e).name for e in exact | trees if Path(e).parent == here}
        keep = []
        for name in sorted(dirs) + sorted(files):
            rel = str(here / name) if str(here) != "." else name
            if rel == MARKER or rel in trees or _lean_temp(name, listed):
                continue
            if rel not in exact:
                found.append(rel)
            elif name in dirs:
                keep.append(name)
        dirs[:] = keep
    return found


def why_not_replaceable(path: str | os.PathLike, extras: bool = True) -> str | None:
    """None when lean may replace `path` (empty, or proven lean's own and holding nothing else), else why not
    (a clause to follow the path: "holds no .lean-output.json ..."). `extras=False` proves only whose it is."""
    path = Path(path)
    if not path.is_dir():
        return "is not a directory"
    if not any(path.iterdir()):
        return None
    marker = read_marker(path)
    if marker is None:
        return (f"holds no valid {MARKER}, so lean cannot prove it wrote it (an older lean writes none): "
                "remove it yourself or choose another -o")
    record = marker.get("record")
    if record and (path / record).is_file():
        if (_json_object(path / record) or {}).get("output_id") != marker["id"]:
            return f"holds a {record} that does not carry the id in its {MARKER}: remove it yourself or choose another -o"
    if extras:
        found = unlisted(path, marker["entries"])
        if found:
            shown = ", ".join(f"'{p}'" for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            return f"holds {shown}, which lean did not write: move them out or choose another -o"
    return None


def remove_output(path: str | os.PathLike) -> None:
    """Remove a directory lean wrote: renamed aside first, checked again there, then deleted. Anything that
    changed since the caller's check (a file added) puts it back and refuses."""
    path = Path(path)
    aside = path.with_name(f".{path.name}.tmp-old-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except OSError as e:
        raise LeanError(f"cannot replace '{path}': {e.strerror or e}: remove it yourself or choose another -o") from None
    why = why_not_replaceable(aside)
    if why is not None:
        os.rename(aside, path)
        raise LeanError(f"'{path}' {why}")
    shutil.rmtree(aside)
