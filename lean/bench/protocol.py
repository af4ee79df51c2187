"""The lines the harness and a measuring (or building) subprocess exchange, spelled in one place.

    from lean.bench import protocol
    protocol.time_request(32, 128, calls=4, untimed=1)    # parent -> child: "time 32 128 4 1"
    protocol.parse_time_request("time 32 128 4 1")        # TimeRequest(32, 128, 4, 1)
    protocol.times_reply(32, 128, [0.25, 0.26])           # child -> parent: "@times 32 128 0.250000000,..."

Child -> parent (stdout): lines starting with "@". READY and TIMES are replies to the parent's
requests; PHASE (what the child is doing) and PROGRESS (a trainer's step) are notes for the display;
every other line is the child's log. Parent -> child (stdin): GO (a subprocess started early may
start), TIME requests (interleaved latency), END (write the result and exit).
The bottom of lean.bench: imports nothing else of the package.
"""

from __future__ import annotations

from typing import NamedTuple

READY = "@ready"  # loaded and scored: waiting for TIME requests
TIMES = "@times"  # the answer to a TIME request
PHASE = "@phase"  # "@phase TEXT": what the child is doing now
PROGRESS = "@progress"  # "@progress STEP MAX_STEPS": a training step finished
GO = "go"
TIME = "time"
END = "end"
SKIPPED = "-"  # in a TIMES reply: a cell this variant does not measure

REPLIES = (READY, TIMES)


class TimeRequest(NamedTuple):
    batch_size: int
    seq_length: int
    calls: int  # timed calls
    untimed: int = 0  # untimed calls before them


class TimesReply(NamedTuple):
    batch_size: int
    seq_length: int
    seconds: list[float] | None  # None: the variant skips this cell


def is_reply(line: str) -> bool:
    return line.startswith(REPLIES)


def is_note(line: str) -> bool:
    """A line for the display, not the log (and not a reply)."""
    return line.startswith("@") and not is_reply(line)


def phase_line(text: str) -> str:
    return f"{PHASE} {text}"


def parse_phase(line: str) -> str | None:
    """The text of a PHASE line, else None."""
    return line[len(PHASE) + 1:] if line.startswith(PHASE + " ") else None


def progress_line(step: int, max_steps: int) -> str:
    return f"{PROGRESS} {step} {max_steps}"


def parse_progress(line: str) -> tuple[int, int] | None:
    """(step, max_steps) of a PROGRESS line with a known total, else None."""
    parts = line.split()
    if len(parts) != 3 or parts[0] != PROGRESS or parts[2] == "0":
        return None
    try:
        return int(parts[1]), int(parts[2])
    except ValueError:
        return None


def time_request(batch_size: int, seq_length: int, calls: int, untimed: int = 0) -> str:
    return f"{TIME} {batch_size} {seq_length} {calls} {untimed}"


def parse_time_request(line: str) -> TimeRequest | None:
    """The request on a line; None for END, an empty line or anything else (the child stops)."""
    words = line.split()
    if len(words) < 4 or words[0] != TIME:
        return None
    return TimeRequest(int(words[1]), int(words[2]), int(words[3]), int(words[4]) if len(words) > 4 else 0)


def times_reply(batch_size: int, seq_length: int, seconds: list[float] | None) -> str:
    values = SKIPPED if seconds is None else ",".join(f"{t:.9f}" for t in seconds)
    return f"{TIMES} {batch_size} {seq_length} {values}"


def parse_times_reply(line: str) -> TimesReply:
    words = line.split()
    values = None if words[3] == SKIPPED else [float(t) for t in words[3].split(",")]
    return TimesReply(int(words[1]), int(words[2]), values)
