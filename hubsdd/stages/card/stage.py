"""Model and dataset cards, and the ``card`` stage that assembles the release.

The card stage reads only the ``stage.json`` of the stages that finished (and the files they name)
and writes two folders, exactly what ``hubsdd publish`` pushes:

* ``runs/<name>/card/model/``: the released checkpoint (hard links to the stage's files), README.md
  (the model card), recipe.yaml, ``hubsdd/<stage>.json`` results, ``plots/*.png``, license files;
* ``runs/<name>/card/dataset/``: the distilled dataset and its card (when distillation ran).

Cards are the packaged Jinja templates ``model_card.md.j2`` / ``dataset_card.md.j2`` rendered
through ``huggingface_hub.ModelCard.from_template`` / ``DatasetCard.from_template``; the optional
sections (training, evaluation) are rendered first from ``hubsdd/stages/card/templates/sections/`` and passed in.
Metadata follows the Hub's conventions: ``base_model`` is the Hub id (never a local path),
``license`` is inherited from the base model, ``eval_results`` become ``model-index``.
"""

from __future__ import annotations

import importlib.resources
import logging
import shutil
from pathlib import Path
from typing import Any

from ...core.version import __version__
from ...core.errors import StageError
from ...core.files import link_or_copy, sha256_file
from ...core.outputs import CardMetrics, CardOutputs
from ...core.stage_io import StageContext, StageOutput, StageResult, checkpoint_dirs

log = logging.getLogger("hubsdd.card")

PAPER_CITATION = """@article{thangarasa2024selfdata,
  title   = {Self-Data Distillation for Recovering Quality in Pruned Large Language Models},
  author  = {Thangarasa, Vithursan and Venkatesh, Ganesh and Lasby, Mike and Sinnadurai, Nish and Lie, Sean},
  journal = {arXiv preprint arXiv:2410.09982},
  year    = {2024}
}"""
GROMOV_CITATION = """@article{gromov2024unreasonable,
  title   = {The Unreasonable Ineffectiveness of the Deeper Layers},
  author  = {Gromov, Andrey and Tirumala, Kushal and Shapourian, Hassan and Glorioso, Paolo and Roberts, Daniel A.},
  journal = {arXiv preprint arXiv:2403.17887},
  year    = {2024}
}"""
SHORTGPT_CITATION = """@article{men2024shortgpt,
  title   = {ShortGPT: Layers in Large Language Models are More Redundant Than You Expect},
  author  = {Men, Xin and Xu, Mingyu and Zhang, Qingyu and Wang, Bingning and Lin, Hongyu and Lu, Yaojie and Han, Xianpei and Chen, Weipeng},
  journal = {arXiv preprint arXiv:2403.03853},
  year    = {2024}
}"""

RESULT_DIR = "hubsdd"


def _templates() -> Any:
    return importlib.resources.files("hubsdd.stages.card.templates")


def template_text(name: str) -> str:
    return (_templates() / name).read_text(encoding="utf-8")


def _jinja_env() -> Any:
    import jinja2

    # Same settings as huggingface_hub's from_template (plain jinja2.Template), plus a loader so
    # sections can include one another.
    return jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: template_text(name)),
                              keep_trailing_newline=True)


def fence(text: str, lang: str = "") -> str:
    """``text`` as a fenced code block that nothing inside it can close: the fence is one backtick
    longer than the longest run of backticks in the text (CommonMark), so a recipe, a prompt
    template or a dataset row holding "```" stays inside its block."""
    import re

    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    marks = "`" * max(3, longest + 1)
    return f"{marks}{lang}\n{text.strip(chr(10))}\n{marks}"


def render_section(name: str, **context: Any) -> str:
    return _jinja_env().get_template(name).render(fence=fence, **context).strip()


# --------------------------------------------------------------------------- release choice


def release_decision(recipe: Any, results: dict[str, StageResult]) -> dict | None:
    """How ``publish.release: auto`` chooses (:mod:`hubsdd.core.release_choice`): on the dev items when
    evaluate scored them, else by the default order (``rule: default``); None when the recipe names
    the release."""
    from ...core import release_choice as rc

    if recipe.publish.release != "auto":
        return None
    variants = list(results["finetune"].typed.outputs.variants) if "finetune" in results else []
    ev = results["evaluate"].typed.metrics if "evaluate" in results else None
    if ev is not None and ev.dev is not None:
        fidelity = {m: f.model_dump() for m, f in (ev.fidelity or {}).items()}
        return rc.choose(ev.dev.evidence.model_dump(), fidelity)
    return {"release": rc.default_choice(variants, "merge" in results), "rule": "default",
            "statement": "no dev items were evaluated (`evaluate.dev`), so the default order chose: the merge, "
                         "else `sdd`, else the first variant, else the pruned model"}


def release_choice(recipe: Any, results: dict[str, StageResult]) -> str:
    """Which checkpoint is published: 'merge', a variant name, or 'pruned'."""
    wanted = recipe.publish.release
    variants = list(results["finetune"].typed.outputs.variants) if "finetune" in results else []
    if wanted == "auto":
        return release_decision(recipe, results)["release"]
    available = ["pruned"] + variants + (["merge"] if "merge" in results else [])
    if wanted not in available:
        raise StageError(
            f"publish.release: {wanted!r} has not been produced by this run (available: {', '.join(available)})",
            fix="run the stage that makes it, or choose one of the available checkpoints",
        )
    return wanted


def release_model_dir(name: str, results: dict[str, StageResult]) -> Path:
    return checkpoint_dirs(results)[name]


# --------------------------------------------------------------------------- metadata


def _model_name(recipe: Any, base_id: str | None, llama: bool) -> str:
    name = recipe.card.model_name or (recipe.publish.model_repo or recipe.name).split("/")[-1]
    # The Llama license asks that derivative model names start with "Llama".
    if llama and not name.lower().startswith("llama"):
        name = f"Llama-{name}"
    return name


def _is_llama(base_id: str | None, license_id: str | None) -> bool:
    return bool((license_id or "").lower().startswith("llama") or "meta-llama/" in (base_id or "").lower())


LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"


def eval_results_for(release: str, results: dict[str, StageResult], model_name: str) -> list[Any]:
    """The model-index entries of the released checkpoint, built from evaluate's raw scores and what
    each task was (one per task; values are fractions 0-1, as lm-eval reports them)."""
    from huggingface_hub import EvalResult

    if "evaluate" not in results:
        return []
    evaluated = results["evaluate"].typed.metrics
    where = "Hub" if evaluated.mode == "hub" else "offline copy"
    out = []
    for task, score in evaluated.scores.get(release, {}).items():
        info = evaluated.tasks[task]
        out.append(EvalResult(
            task_type="text-generation",
            dataset_type=info.dataset_id or task,
            dataset_name=f"{info.dataset_pretty} ({info.num_fewshot}-shot, {info.items} items, {where})",
            dataset_config=info.dataset_config,
            dataset_split=info.split,
            dataset_args={"num_few_shot": info.num_fewshot},
            metric_type=info.metric_name,
            metric_value=round(score.value, 6),
            metric_name=f"{info.metric_pretty} (lm-eval {evaluated.lm_eval_version})",
            source_name="hubsdd (lm-eval)",
            source_url=LM_EVAL_URL,
        ))
    return out


def retention_summary(results: dict[str, StageResult], release: str) -> dict | None:
    """The release's retention for the card's metadata (and ``hubsdd pull``): the figure, its 95%
    interval, the margin retention, how many items it rests on, and whether they are enough to
    headline it (:func:`hubsdd.core.evidence.headline_ok`)."""
    from ...core import evidence

    found = results["evaluate"].typed.metrics.evidence
    row = found.models.get(release) if found is not None else None
    if row is None or row.retention is None:
        return None
    out = {
        "value": round(row.retention.value, 6),
        "ci95": [round(x, 6) for x in row.retention.ci95],
        "items_per_task": min(found.items.values(), default=0),
        "tasks": len(found.items),
        "precise": evidence.headline_ok(found.model_dump(), release),
    }
    if row.margin_retention is not None:
        out["margin"] = round(row.margin_retention.value, 6)
        out["margin_ci95"] = [round(x, 6) for x in row.margin_retention.ci95]
    return out


def build_model_card_data(recipe: Any, results: dict[str, StageResult], release: str,
                          files: dict[str, str], fingerprint: str) -> Any:
    from huggingface_hub import ModelCardData

    base = results.get("base")
    base_id = recipe.base.model
    license_id = recipe.card.license or (base.typed.outputs.license if base else None) or recipe.base.license
    llama = _is_llama(base_id, license_id)
    model_name = _model_name(recipe, base_id, llama)
    tags = ["hubsdd", "pruned", "layer-pruning"]
    if "distill" in results:
        tags += ["self-data-distillation", "sdd"]
    if "merge" in results:
        tags += ["mergekit", "merge"]
    tags += [t for t in recipe.card.tags if t not in tags]
    meta: dict[str, Any] = {
        "version": __version__,
        "run_fingerprint": fingerprint,
        "recipe_sha256": recipe.sha256(),
        "release": release,
        "files": files,
    }
    if "prune" in results:
        meta["prune"] = results["prune"].typed.metrics.model_dump(
            include={"method", "removed_layers", "layers_before", "layers_after", "params_before", "params_after"})
    if "evaluate" in results:
        summary = retention_summary(results, release)
        if summary is not None:
            meta["retention"] = summary
    datasets = [recipe.publish.dataset_repo] if recipe.publish.dataset_repo and "distill" in results else None
    return ModelCardData(
        base_model=base_id,
        # A pruned-then-trained model is a derivative of the base's weights: "finetune" is the
        # Hub's relation for that ("merge"/"adapter"/"quantized" describe other things).
        base_model_relation="finetune" if base_id else None,
        datasets=datasets,
        language=recipe.card.language,
        library_name="transformers",
        license=license_id or "other",
        model_name=model_name,
        pipeline_tag="text-generation",
        tags=tags,
        eval_results=eval_results_for(release, results, model_name) or None,
        hubsdd=meta,
    )


# --------------------------------------------------------------------------- rendering


def _plot_in_release(stage: str, key: str) -> str:
    """Where a stage's plot lies in the release folder (and so how the card links it)."""
    return f"plots/{stage}_{key}.png"


def _plots_in_release(results: dict[str, StageResult]) -> dict[str, dict[str, str]]:
    plots: dict[str, dict[str, str]] = {}
    for name, res in results.items():
        for key in res.outputs.get("plots") or {}:
            plots.setdefault(name, {})[key] = _plot_in_release(name, key)
    return plots


SDD_LINK = "self-data distillation (arXiv [2410.09982](https://arxiv.org/abs/2410.09982))"


def _recovery_phrase(release: str, results: dict[str, StageResult]) -> str:
    """How the released checkpoint recovered quality, in words for the card's first sentence."""
    variants = results["finetune"].typed.outputs.variants if "finetune" in results else {}

    def one(name: str) -> str:
        v = variants.get(name)
        distilled = v is not None and v.data in ("distilled", "accepted")
        if v is not None and v.loss == "gkd":
            return "on-policy distillation from the base model (it scored the model's own responses)"
        if v is not None and v.loss == "kd":
            return "logit distillation from the base model" + (" on self-distilled data" if distilled else "")
        if v is not None and v.loss != "ce":  # a plug-in loss, in its own words
            return (v.loss_description or f"the `{v.loss}` loss") + (" on self-distilled data" if distilled else "")
        return SDD_LINK if distilled else "fine-tuning on the original data"

    if release == "merge" and "merge" in results:
        models = results["merge"].typed.outputs.models
        return "a merge of variants trained with " + " and ".join(one(m) for m in models)
    return one(release)


def _headline(results: dict[str, StageResult], release: str) -> bool:
    """Whether the evaluation is precise enough to headline the release's retention."""
    from ...core import evidence

    if "evaluate" not in results:
        return False
    found = results["evaluate"].typed.metrics.evidence
    return found is not None and evidence.headline_ok(found.model_dump(), release)


def render_model_card(recipe: Any, results: dict[str, StageResult], release: str, files: dict[str, str],
                      fingerprint: str, decision: dict | None = None) -> Any:
    """The model card (a huggingface_hub.ModelCard) of a run's finished stages."""
    from huggingface_hub import ModelCard

    card_data = build_model_card_data(recipe, results, release, files, fingerprint)
    plots = _plots_in_release(results)
    training = render_section(
        "sections/training.md.j2", ft=results["finetune"].typed, cfg=recipe.finetune, plots=plots,
        ds=results["distill"].typed if "distill" in results else None, dataset_repo=recipe.publish.dataset_repo,
    ) if "finetune" in results else ""
    evaluation = render_section(
        "sections/evaluation.md.j2", ev=results["evaluate"].typed, plots=plots, release=release,
        headline=_headline(results, release), ft=results["finetune"].typed if "finetune" in results else None,
        mg=results["merge"].typed if "merge" in results else None,
    ) if "evaluate" in results else ""
    if decision is not None and evaluation:
        evaluation = (evaluation + "\n\n" + render_section("sections/release.md.j2", choice=decision)).strip()
    versions = {}
    for res in results.values():
        versions.update(res.data.get("versions", {}))
    prune = results["prune"].typed.metrics if "prune" in results else None
    citations = [PAPER_CITATION]
    if prune:
        citations.append(GROMOV_CITATION if prune.method == "angular" else SHORTGPT_CITATION)
    return ModelCard.from_template(
        card_data,
        template_str=template_text("model_card.md.j2"),
        fence=fence,
        # ModelCardData.to_dict() drops model_name once eval_results exist (it moves into
        # model-index), so the title and first sentence get it explicitly.
        model_name=card_data.model_name,
        prune=prune,
        plots=plots,
        release=release,
        release_label={"merge": "merged", "pruned": "pruned (not fine-tuned)"}.get(release, f"fine-tuned ({release})"),
        recovery=_recovery_phrase(release, results),
        model_repo=recipe.publish.model_repo or f"<your-org>/{card_data.model_name}",
        dataset_repo=recipe.publish.dataset_repo,
        base_hub_id=recipe.base.model,
        base_commit=results["base"].typed.outputs.commit_sha if "base" in results else None,
        has_chat_template=results["base"].typed.outputs.has_chat_template if "base" in results else True,
        description=recipe.card.description,
        training_section=training,
        evaluation_section=evaluation,
        recipe_text=recipe.text(),
        versions=versions,
        built_with_llama=_is_llama(recipe.base.model, card_data.license),
        citations=citations,
    )


def render_dataset_card(recipe: Any, results: dict[str, StageResult], data_files: list[str],
                        files: dict[str, str] | None = None, fingerprint: str | None = None) -> Any:
    from huggingface_hub import DatasetCard, DatasetCardData

    distill = results["distill"]
    license_id = recipe.distill.data_license or "other"
    rows = _sample_rows(distill.path("data"))
    card_data = DatasetCardData(
        license=license_id,
        language=recipe.card.language,
        task_categories=["text-generation"],
        tags=["hubsdd", "self-data-distillation", "synthetic"],
        pretty_name=f"{recipe.name} self-distilled data",
        size_categories=[_size_category(distill.typed.metrics.rows)],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": p} for p in data_files]}],
        # Lets `hubsdd publish` know which files of the dataset repo it created.
        hubsdd={"version": __version__, "run_fingerprint": fingerprint, "files": files or {}},
    )
    return DatasetCard.from_template(
        card_data,
        template_str=template_text("dataset_card.md.j2"),
        fence=fence,
        distill=distill.typed,
        sample_rows=rows,
        dataset_repo=recipe.publish.dataset_repo,
        model_repo=recipe.publish.model_repo,
        license=license_id,
        recipe_name=recipe.name,
    )


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def _sample_rows(parquet: Path, n: int = 3) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    return table.slice(0, n).to_pylist()


# --------------------------------------------------------------------------- assembling


def release_file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a release except the card itself (which lists them) and hidden
    files (which publish does not upload)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and str(rel) != "README.md" and not any(part.startswith(".") for part in rel.parts):
            out[str(rel)] = sha256_file(p)
    return out


def assemble_release(recipe: Any, results: dict[str, StageResult], out_dir: Path, fingerprint: str) -> dict:
    """Write the model release (and the dataset release) folders; return what was written."""
    from ...core.models import model_files

    decision = release_decision(recipe, results)
    release = decision["release"] if decision else release_choice(recipe, results)
    model_out = out_dir / "model"
    model_out.mkdir(parents=True, exist_ok=True)
    if "prune" in results:
        for f in model_files(release_model_dir(release, results)):
            link_or_copy(f, model_out / f.name)
    base = results.get("base")
    if base is not None and base.typed.outputs.license_files:
        lic_dir = base.path("license_dir")
        for name in base.typed.outputs.license_files:
            if (lic_dir / name).exists() and not (model_out / name).exists():
                link_or_copy(lic_dir / name, model_out / name)
    (model_out / "recipe.yaml").write_text(recipe.text())
    for name, res in results.items():
        (model_out / RESULT_DIR).mkdir(exist_ok=True)
        shutil.copy2(res.dir / "stage.json", model_out / RESULT_DIR / f"{name}.json")
        for key, rel in (res.outputs.get("plots") or {}).items():
            src = res.resolve(rel)
            if src.exists():
                link_or_copy(src, model_out / _plot_in_release(name, key))
    files = release_file_hashes(model_out)
    card = render_model_card(recipe, results, release, files, fingerprint, decision)
    card.save(model_out / "README.md")

    written = {"model_dir": "model", "release": release, "release_rule": decision}
    if "distill" in results:
        data_out = out_dir / "dataset"
        data_files = ["data/train.parquet"]
        link_or_copy(results["distill"].path("data"), data_out / data_files[0])
        stored = results["distill"].outputs.get("teacher_logits")
        if stored:  # the teacher's top-k log-probabilities travel with the data (the card says what they are)
            for f in sorted(results["distill"].resolve(stored["dir"]).iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    link_or_copy(f, data_out / stored["dir"] / f.name)
        render_dataset_card(recipe, results, data_files, release_file_hashes(data_out), fingerprint).save(
            data_out / "README.md")
        written["dataset_dir"] = "dataset"
    return written


def run_card(ctx: StageContext) -> StageOutput:
    """Entry of the ``card`` stage."""
    written = assemble_release(ctx.recipe, ctx.inputs, ctx.out_dir, ctx.fingerprint)
    return StageOutput(outputs=CardOutputs(**written), metrics=CardMetrics(stages=list(ctx.inputs)))
