"""Distill's checkpoint directory: lean's own (a marker file), a fingerprint for --resume, removal after success.

The directory outlives a killed run so `lean distill --resume` can continue, and is removed once the
student is written. Because lean removes it, lean must own it: it creates the directory with the
marker `.lean-checkpoints`, refuses a directory holding anything else, and removes only a directory
holding the marker (see docs/security.md).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lean.errors import LeanError

# Config keys that change how a run is carried out but not what it learns: a resumed run may differ in these.
_RUNTIME_KEYS = ("resume", "checkpoint_dir", "device")
_FINGERPRINT = "lean-distill.json"
# Written into every checkpoint directory lean creates: only a directory holding it is ever removed or reused.
CHECKPOINT_MARKER = ".lean-checkpoints"


def check_checkpoint_location(ckpt: str | Path, out: str | Path, source: str | None = None) -> Path:
    """The checkpoint directory is lean's own: new, empty, or holding lean's marker; never the working
    directory, the teacher, the output, or an ancestor of any of them (lean removes it after success)."""
    from lean.steps import check_target

    path = check_target(ckpt, "checkpoint directory", "--checkpoint-dir", source)
    real, out_real = path.resolve(), Path(out).expanduser().resolve()
    if real == out_real or real in out_real.parents or out_real in real.parents:
        raise LeanError(f"checkpoint directory '{ckpt}' overlaps the output '{out}': choose a --checkpoint-dir "
                        "beside it (the default is OUTPUT.checkpoints)")
    if path.is_dir() and any(path.iterdir()) and not (path / CHECKPOINT_MARKER).is_file():
        raise LeanError(f"checkpoint directory '{ckpt}' holds files lean did not write (no {CHECKPOINT_MARKER} in it), "
                        "and lean removes its checkpoint directory after a successful run: choose a new --checkpoint-dir")
    return path


def fingerprint(config, teacher_hash: str | None) -> dict[str, Any]:
    """What a checkpoint directory must match for --resume: the learning config and the teacher."""
    values = {k: v for k, v in asdict(config).items() if k not in _RUNTIME_KEYS}
    return {"config": values, "teacher_manifest_hash": teacher_hash}


def check_checkpoint_dir(ckpt: Path, config, teacher_hash: str | None) -> bool:
    """Refuse to resume from another run's checkpoints, or to start over on top of them. True: resuming."""
    has_checkpoints = last_complete_checkpoint(ckpt) is not None
    if not config.resume:
        if has_checkpoints:
            raise LeanError(f"checkpoint directory '{ckpt}' holds checkpoints of an earlier run: "
                            "pass --resume to continue it, or delete it to start over")
        return False
    if not has_checkpoints:
        raise LeanError(f"--resume: no checkpoint in '{ckpt}' to continue from: run without --resume")
    saved = _read_object(ckpt / _FINGERPRINT) if (ckpt / _FINGERPRINT).is_file() else {}
    check_resumable(last_complete_checkpoint(ckpt))
    now = fingerprint(config, teacher_hash)
    if saved != json.loads(json.dumps(now)):
        old, new = saved.get("config") if isinstance(saved.get("config"), dict) else {}, now["config"]
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if saved.get("teacher_manifest_hash") != now["teacher_manifest_hash"]:
            differ.append("teacher")
        raise LeanError(f"--resume: '{ckpt}' was written by a run with a different config ({', '.join(differ) or 'unknown'}): "
                        "resume with the same options, or use another --checkpoint-dir")
    return True


def write_fingerprint(ckpt: Path, config, teacher_hash: str | None) -> None:
    """Create the checkpoint directory with lean's marker (which makes it removable) and the run's fingerprint."""
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / CHECKPOINT_MARKER).write_text("checkpoints of a lean distill run; removed when the run succeeds\n")
    (ckpt / _FINGERPRINT).write_text(json.dumps(fingerprint(config, teacher_hash), indent=2, default=str) + "\n")


def remove_checkpoints(ckpt: Path) -> None:
    """Remove a checkpoint directory lean made (it holds the marker); anything else stays."""
    if (ckpt / CHECKPOINT_MARKER).is_file():
        shutil.rmtree(ckpt, ignore_errors=True)


def last_complete_checkpoint(ckpt: Path) -> Path | None:
    """The newest checkpoint that was fully written (Trainer writes trainer_state.json last), or None.

    A kill during a save leaves a partial folder; resuming skips it rather than fail on it.
    """
    done = [p for p in ckpt.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _read_object(file: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint directory; a damaged file is one line saying how to go on."""
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError, OSError):
        value = None
    if not isinstance(value, dict):
        raise LeanError(f"--resume: '{file}' is damaged (not a JSON object): delete the checkpoint directory "
                        "and run without --resume")
    return value


def check_resumable(checkpoint: Path) -> None:
    """The files Trainer resumes from are whole: its state (a JSON object with a step), the weights
    (safetensors that fit their file), and the optimizer, scheduler and RNG states (torch zip archives)."""
    import zipfile

    from lean.models import check_safetensors

    state = _read_object(checkpoint / "trainer_state.json")
    if isinstance(state.get("global_step"), bool) or not isinstance(state.get("global_step"), int):
        raise LeanError(f"--resume: '{checkpoint / 'trainer_state.json'}' records no step: delete the checkpoint "
                        "directory and run without --resume")
    for file in sorted(checkpoint.glob("*.safetensors")):
        try:
            check_safetensors(file)
        except LeanError as e:
            raise LeanError(f"--resume: {e}; or delete the checkpoint directory and run without --resume") from None
    for file in sorted(checkpoint.glob("*.pt")) + sorted(checkpoint.glob("*.pth")):
        try:
            with zipfile.ZipFile(file) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError):
            raise LeanError(f"--resume: '{file}' is damaged (not a complete torch archive): delete the checkpoint "
                            "directory and run without --resume") from None
