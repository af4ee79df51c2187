"""Every GPU figure of lean from one command, within a time box (docs/gpu.md).

    bash benchmarks/gpu/run.sh [OUT_DIR]                       # on a CUDA machine, carry in .gpu-carry/
    python benchmarks/gpu/run.py --out DIR --cpu-dry-run        # the same steps, tiny, on the CPU

Three parts, one after another, each in its own subprocess with its own time limit, all under one
deadline (default 450 s, so the whole call stays under 8 minutes):
  tests      `pytest -m gpu tests`: the kernel at full sizes in fp16/bf16/fp32, models in half precision,
             bitsandbytes on CUDA where it is importable
  suite      `lean bench benchmarks/gpu/suite.yaml`: accuracy, latency and memory of the GPU rows
  attention  `benchmarks/bench_attention.py`: TFLOP/s of the kernel against every SDPA backend; it gets
             what time is left, and rows it cannot reach are recorded as not run
Writes at most 8 flat files to OUT (what a lent machine hands back): summary.json, summary.md,
tests.txt, suite-results.json, suite-report.md, attention.json, attention.md, log.txt.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import carry as carry_mod  # noqa: E402  (beside this file; benchmarks/ is no package)
import dry_run  # noqa: E402

PARTS = ("tests", "suite", "attention")
# -P keeps the working directory off sys.path: the checkout's lean/ (which has no kernels/ inside) must not
# shadow the linked one on PYTHONPATH. Python 3.11 and later.
NO_CWD = ["-P"] if sys.version_info >= (3, 11) else []


@dataclass
class Part:
    name: str
    status: str = "not run"  # ok | failed | timeout | not run
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)


class Runner:
    """Runs the parts as subprocesses against one deadline, logging each one's output to log.txt."""

    def __init__(self, out: Path, work: Path, env: dict, deadline_s: float):
        self.out, self.work, self.env = out, work, env
        self.started = time.monotonic()
        self.deadline = self.started + deadline_s
        self.log = (out / "log.txt").open("w")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def call(self, part: Part, cmd: list[str], limit_s: float, cwd: Path) -> int | None:
        limit_s = max(1.0, min(limit_s, self.left()))
        self.log.write(f"\n=== {part.name}: {' '.join(cmd)} (limit {limit_s:.0f} s)\n")
        self.log.flush()
        start = time.monotonic()
        try:
            rc = subprocess.run(cmd, cwd=cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                timeout=limit_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
        part.seconds = round(time.monotonic() - start, 1)
        part.status = "timeout" if rc is None else ("ok" if rc == 0 else "failed")
        part.detail["returncode"] = rc
        return rc


def junit_summary(path: Path) -> dict:
    """Counts and the name of every failed or skipped test (with the reason) from pytest's junit XML."""
    if not path.is_file():
        return {"error": "pytest wrote no report"}
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed, skipped = [], []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            counts["failed"] += 1
            failed.append({"test": name, "message": (bad.get("message") or "")[:300]})
        elif skip is not None:
            counts["skipped"] += 1
            skipped.append({"test": name, "reason": (skip.get("message") or "")[:200]})
        else:
            counts["passed"] += 1
    return {**counts, "failed_tests": failed, "skipped_tests": skipped}


def run_tests(runner: Runner, dry: bool) -> Part:
    part = Part("tests")
    junit = runner.work / "tests-junit.xml"
    paths = ["tests/test_flash_attention.py", "tests/test_attention.py"] if dry else ["tests"]
    # Compiling the kernel for each tested shape is most of the time: spread it over processes where
    # pytest-xdist is there, and compile one config per kernel (correctness needs no tuning).
    workers = ["-n", "6"] if not dry and importlib.util.find_spec("xdist") else []
    cmd = [sys.executable, *NO_CWD, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs", *workers,
           "--continue-on-collection-errors",  # a test module the image cannot import must not stop the rest
           f"--junitxml={junit}", *paths]
    runner.env["LEAN_FLASH_AUTOTUNE"] = "single"
    try:
        rc = runner.call(part, cmd, 180 if dry else 120, REPO)
    finally:
        runner.env["LEAN_FLASH_AUTOTUNE"] = "quick"
    part.detail.update(junit_summary(junit))
    if rc == 5:  # pytest: no test selected, which is what a machine without CUDA gives
        part.status = "ok"
    lines = [f"{k}: {part.detail.get(k)}" for k in ("passed", "failed", "skipped")]
    lines += [f"FAILED {f['test']}: {f['message']}" for f in part.detail.get("failed_tests", [])]
    lines += [f"SKIPPED {s['test']}: {s['reason']}" for s in part.detail.get("skipped_tests", [])]
    (runner.out / "tests.txt").write_text("\n".join(lines) + "\n")
    return part


def run_suite(runner: Runner, suite: Path, dry: bool) -> Part:
    part = Part("suite")
    run_dir = runner.work / "suite-run"
    cmd = [sys.executable, *NO_CWD, "-m", "lean.cli", "bench", str(suite), "-o", str(run_dir),
           "--runs-dir", str(runner.work / "suite-cache"), "--device", "cpu" if dry else "cuda"]
    runner.call(part, cmd, 400 if dry else 200, runner.work)
    for src, dest in (("results.json", "suite-results.json"), ("report.md", "suite-report.md")):
        if (run_dir / src).is_file():
            shutil.copy2(run_dir / src, runner.out / dest)
    results = run_dir / "results.json"
    if results.is_file():
        variants = json.loads(results.read_text()).get("variants", {})
        rows = variants.values() if isinstance(variants, dict) else variants
        part.detail["variants"] = {(v.get("name") or "?"): v.get("status") for v in rows if isinstance(v, dict)}
    return part


def run_attention(runner: Runner, dry: bool) -> Part:
    part = Part("attention")
    margin = 20 if dry else 40  # the row in flight when the budget runs out, and writing the files
    budget = max(0.0, runner.left() - margin)
    shapes = (["--device", "cpu", "--seq", "64", "--head-dim", "32", "--dtype", "bf16", "--no-causal",
               "--batch", "1", "--heads", "2", "--warmup", "1", "--reps", "1"] if dry else
              ["--warmup", "3", "--reps", "10"])
    cmd = [sys.executable, *NO_CWD, str(REPO / "benchmarks" / "bench_attention.py"), *shapes,
           "--budget-s", f"{budget:.0f}", "--json", str(runner.out / "attention.json"),
           "--markdown", str(runner.out / "attention.md")]
    runner.call(part, cmd, budget + margin, runner.work)
    if (runner.out / "attention.json").is_file():
        rows = json.loads((runner.out / "attention.json").read_text())["rows"]
        part.detail["rows"] = {"measured": sum(r["tflops"] is not None for r in rows),
                               "error": sum(r["error"] is not None for r in rows),
                               "not_run": sum(r["skipped"] is not None for r in rows)}
    return part


def environment(found: dict) -> dict:
    import torch

    versions = {}
    for name in ("torch", "transformers", "triton", "bitsandbytes", "onnxruntime", "onnxruntime-gpu"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    # The checkout's own commit where it has .git; a copied tree without one has the carry's record.
    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True,
                             text=True, cwd=REPO)
        commit = git.stdout.strip() if git.returncode == 0 else None
    except OSError:
        commit = None
    commit = commit or found.get("commit") or os.environ.get("LEAN_GIT_COMMIT")
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "python": platform.python_version(), "versions": versions,
            "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "carry": found}


def summary_markdown(env: dict, parts: list[Part], total_s: float, dry: bool) -> str:
    lines = [f"# lean on {env['device']}{' (CPU dry run)' if dry else ''}", "",
             f"{env['date']}, commit {env['commit']}, Python {env['python']}, "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), "",
             f"Total {total_s:.0f} s.", "", "| part | status | seconds | detail |", "|---|---|---|---|"]
    for p in parts:
        shown = {k: v for k, v in p.detail.items() if k not in ("failed_tests", "skipped_tests")}
        lines.append(f"| {p.name} | {p.status} | {p.seconds:.0f} | {json.dumps(shown)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and markdown (created)")
    parser.add_argument("--carry", type=Path, default=REPO / ".gpu-carry", help="folder benchmarks/gpu/pack.sh wrote")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="the whole run stops by then (default 450 s; 900 s for the dry run, which a busy shared "
                             "CPU slows)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1)")
    args = parser.parse_args(argv)
    if not args.cpu_dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu/run.py: no CUDA GPU here; use --cpu-dry-run to check the script on the CPU", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lean-gpu-"))
    site = work / "site"
    found = carry_mod.unpack(args.carry if args.carry.is_dir() else None, site)
    pythonpath = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": pythonpath,
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "TRITON_CACHE_DIR": str(work / "triton-cache"), "LEAN_FLASH_AUTOTUNE": "quick"}
    if found.get("commit"):
        env["LEAN_GIT_COMMIT"] = found["commit"]
    if args.cpu_dry_run:
        env["TRITON_INTERPRET"] = "1"
        suite = dry_run.prepare(work)
    else:
        suite = HERE / "suite.yaml"
    if args.deadline_s is None:
        args.deadline_s = 900.0 if args.cpu_dry_run else 450.0
    runner = Runner(args.out, work, env, args.deadline_s)
    parts = []
    for name in args.parts:
        if name == "tests":
            parts.append(run_tests(runner, args.cpu_dry_run))
        elif name == "suite":
            parts.append(run_suite(runner, suite, args.cpu_dry_run))
        else:
            parts.append(run_attention(runner, args.cpu_dry_run))
        print(f"{parts[-1].name}: {parts[-1].status} in {parts[-1].seconds:.0f} s", file=sys.stderr)
    total = time.monotonic() - runner.started
    info = environment(found)
    summary = {"environment": info, "dry_run": args.cpu_dry_run, "total_s": round(total, 1),
               "deadline_s": args.deadline_s, "parts": [p.__dict__ for p in parts]}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text(summary_markdown(info, parts, total, args.cpu_dry_run))
    runner.log.close()
    print((args.out / "summary.md").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(p.status == "ok" for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
