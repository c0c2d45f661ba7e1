"""Card metadata checks: what the Hub's ``POST /api/validate-yaml`` refuses.

``hubsdd publish`` posts each card here before any upload, so a card the real Hub would refuse
fails the tests the same way (a local path as ``base_model``, an unknown license, a malformed
``model-index``). The repository API also reads a README's front matter for ``cardData``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# License identifiers the Hub accepts in card metadata (plus "other").
KNOWN_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear
c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0
cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0
cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl
ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0
odc-by odbl openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3
llama4 gemma unknown other
""".split())
HUB_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w\-.]{0,95}(/[A-Za-z0-9][\w\-.]{0,95})?$")
FRONT_MATTER_RE = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


def front_matter(text: str) -> tuple[str | None, str]:
    """Split a README into (YAML block or None, body)."""
    m = FRONT_MATTER_RE.search(text)
    if not m:
        return None, text
    return m.group(2), text[m.end():]


def card_data(text: str) -> dict | None:
    """The parsed front matter of a README, or None when absent or unreadable."""
    block, _ = front_matter(text)
    if block is None:
        return None
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def validate_card_metadata(content: str, repo_type: str = "model") -> tuple[list[str], list[str]]:
    """What ``POST /api/validate-yaml`` checks: returns (errors, warnings).

    Real checks, not a stub: the front matter must parse to a mapping; ``license`` must be a known
    id or 'other'; ``base_model`` must be Hub repo ids (never a local path such as /x or ./x);
    ``model-index`` must be a list of {name, results: [{task: {type}, dataset: {type, name},
    metrics: [{type, value}]}]}; ``tags``/``datasets`` lists of strings.
    """
    errors: list[str] = []
    warnings: list[str] = []
    block, _ = front_matter(content)
    if block is None:
        warnings.append("Empty or missing yaml metadata in repo card")
        return errors, warnings
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        return [f"Invalid YAML in README.md front matter: {exc}"], warnings
    if data is None:
        warnings.append("Empty or missing yaml metadata in repo card")
        return errors, warnings
    if not isinstance(data, dict):
        return ["YAML metadata must be a mapping (key: value pairs)"], warnings

    def str_list(key: str) -> list | None:
        value = data.get(key)
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v for v in items):
            errors.append(f'"{key}" must be a string or a list of strings')
            return None
        return items

    for lic in str_list("license") or []:
        if lic.lower() not in KNOWN_LICENSES:
            errors.append(f'"license" must be one of the Hub license ids or "other", got {lic!r}')
    for key in ("base_model", "datasets"):
        for ref in str_list(key) or []:
            if ref.startswith(("/", ".", "~")) or "\\" in ref or ":" in ref or not HUB_REPO_ID_RE.match(ref):
                errors.append(f'"{key}" must be Hub repository ids (org/name), got {ref!r}')
    str_list("tags")
    for key in ("pipeline_tag", "library_name", "base_model_relation"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
    if "model-index" in data:
        errors.extend(_check_model_index(data["model-index"]))
    return errors, warnings


def _check_model_index(index: Any) -> list[str]:
    errs: list[str] = []
    if not isinstance(index, list):
        return ['"model-index" must be a list']
    for i, model in enumerate(index):
        where = f"model-index[{i}]"
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errs.append(f'"{where}" must be a mapping with a string "name"')
            continue
        results = model.get("results")
        if not isinstance(results, list):
            errs.append(f'"{where}.results" must be a list')
            continue
        for j, res in enumerate(results):
            rw = f"{where}.results[{j}]"
            if not isinstance(res, dict):
                errs.append(f'"{rw}" must be a mapping')
                continue
            task = res.get("task")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errs.append(f'"{rw}.task.type" is required')
            ds = res.get("dataset")
            if not isinstance(ds, dict) or not isinstance(ds.get("type"), str) or not isinstance(ds.get("name"), str):
                errs.append(f'"{rw}.dataset" needs string "type" and "name"')
            metrics = res.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errs.append(f'"{rw}.metrics" must be a non-empty list')
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    errs.append(f'"{rw}.metrics[{k}]" needs a string "type" and a "value"')
    return errs
