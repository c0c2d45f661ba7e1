"""Packed log-likelihood scoring gives lm-eval's own numbers, request by request."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, needs_smollm2, tiny_config

from hubsdd.stages.evaluate import scoring
from hubsdd.stages.evaluate.offline import prepare_offline_tasks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(model_type: str = "llama"):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(model_type)
    cfg.max_position_embeddings = 2048
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_tree_mask_lets_each_branch_see_the_context_and_itself_only() -> None:
    trees = scoring.build_trees([(None, [5, 6, 7], [8, 9]), (None, [5, 6, 7], [10, 11, 12]), (None, [1, 2], [3])])
    assert [len(t.members) for t in trees] == [2, 1]
    tokens, positions, tree_of, branch_of, wanted = scoring.pack_row(trees)
    assert tokens == [5, 6, 7, 8, 10, 11, 1, 2]
    assert positions == [0, 1, 2, 3, 3, 4, 0, 1]
    mask = scoring.tree_mask(tree_of, branch_of)[0, 0]
    assert mask[3].tolist() == [True, True, True, True, False, False, False, False]   # 8 sees ctx + itself
    assert mask[5].tolist() == [True, True, True, False, True, True, False, False]    # 11 skips branch 1
    assert mask[7].tolist() == [False] * 6 + [True, True]                             # second tree alone
    assert wanted == [(0, [2, 3], 0), (1, [2, 4, 5], 0), (2, [7], 6)]


def test_rows_scored_together_give_the_scores_of_rows_scored_alone() -> None:
    """The GPU path (several padded rows per call) against the CPU path (one row per call): the
    same log-likelihoods and greedy flags for every request, rows of unequal length included."""
    model = tiny()
    gen = torch.Generator().manual_seed(3)
    requests = []
    for item in range(9):
        ctx = torch.randint(5, 200, (int(torch.randint(3, 40, (1,), generator=gen)),), generator=gen).tolist()
        for choice in range(1 + item % 4):
            cont = torch.randint(5, 200, (1 + (item + choice) % 5,), generator=gen).tolist()
            requests.append((None, ctx, cont))
    alone = scoring.score_packed(model, requests, vocab_size=model.config.vocab_size, pack_tokens=64)
    together = scoring.score_packed(model, requests, vocab_size=model.config.vocab_size, pack_tokens=64,
                                    rows_per_call=4)
    assert len(alone) == len(requests) and all(r is not None for r in together)
    for (a, ga), (b, gb) in zip(alone, together):
        assert abs(a - b) < 1e-4 and ga == gb
    assert scoring.packing_for("cpu", 8) == (scoring.PACK_TOKENS, 1)
    assert scoring.packing_for(torch.device("cuda", 0), 16) == (1024, 16)


def compare(model, tok, tasks: list[str], limit: int, tmp_path: Path) -> tuple[float, int]:
    """(largest |log-likelihood difference|, greedy flags that differ) between lm-eval's HFLM and
    PackedHFLM over every request of the tasks."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    prepare_offline_tasks(tasks, {t: 0 for t in tasks}, limit, 5, tmp_path)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    runs = []
    for cls in (HFLM, scoring.packed_lm_class()):
        lm = cls(pretrained=model, tokenizer=tok, batch_size=4)
        runs.append(evaluator.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True,
                                              bootstrap_iters=0))
    worst, flips, seen = 0.0, 0, 0
    for task, samples in runs[0]["samples"].items():
        for a, b in zip(samples, runs[1]["samples"][task], strict=True):
            for (ra,), (rb,) in zip(a["resps"], b["resps"], strict=True):
                worst = max(worst, abs(ra[0] - rb[0]))
                flips += ra[1] != rb[1]
                seen += 1
    assert seen > 3 * limit
    return worst, flips


def test_packed_scores_equal_lm_eval_on_a_tiny_model(tmp_path: Path) -> None:
    worst, flips = compare(tiny(), make_tokenizer(), ["arc_easy", "hellaswag", "winogrande", "mmlu"], 6, tmp_path)
    assert worst < 1e-3 and flips == 0


def test_models_with_sliding_windows_fall_back_to_lm_eval(tmp_path: Path) -> None:
    assert scoring.packing_supported(tiny())
    gemma = tiny("gemma2")
    assert not scoring.packing_supported(gemma)
    worst, flips = compare(gemma, make_tokenizer(), ["arc_easy"], 4, tmp_path)
    assert worst == 0.0 and flips == 0


@pytest.mark.slow
@needs_smollm2
def test_packed_scores_equal_lm_eval_on_smollm2(tmp_path: Path) -> None:
    from conftest import load_smollm2

    model, tok = load_smollm2()
    torch.set_num_threads(2)
    worst, flips = compare(model, tok, ["arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu"], 4, tmp_path)
    assert worst < 1e-3 and flips == 0
