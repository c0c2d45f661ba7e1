"""Faster log-likelihood scoring for lm-eval: each context once, every choice packed after it.

lm-eval's ``HFLM`` scores a multiple-choice item as one sequence per choice (context +
continuation), right-padded in batches: the context is recomputed for every choice, padding is
computed too, and the vocabulary projection and log-softmax run over every position although
only the continuation's are read. On a CPU that is most of an evaluation's time.

:class:`PackedHFLM` is ``HFLM`` with one method replaced. Requests whose context tokens are
identical (the choices of one item) become one *tree*: the context, then each continuation
(minus its last token, which is only predicted) side by side, each attending to the context and
to itself only, with position ids restarting after the context. Several trees are packed into
one row (no padding) under a block-diagonal mask, and logits are computed only at the positions
whose next token is scored. The arithmetic is the same as lm-eval's up to float summation order
(``tests/test_evaluate_scoring.py`` compares the two on every request of real tasks); lm-eval's tasks,
metrics, few-shot sampling and aggregation are untouched.

The packed path needs plain causal attention through SDPA (no sliding window, no attention
softcapping); other models, truncated inputs and seq2seq models go through lm-eval's own code.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("hubsdd.scoring")

# Tokens per packed row: large enough to amortise per-call overhead, small enough that the
# masked (wasted) part of attention, quadratic in the row length, stays small.
PACK_TOKENS = 256


def packing_supported(model: Any) -> bool:
    """Whether custom 4D masks with packed position ids give plain causal attention for ``model``."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if getattr(text, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if getattr(text, "sliding_window", None) is not None and getattr(text, "use_sliding_window", True):
        return False
    layer_types = getattr(text, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return False
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(text, name, None):
            return False
    return True


class _Tree:
    """One context and the continuations scored after it (indices into the request list)."""

    __slots__ = ("context", "members")

    def __init__(self, context: tuple[int, ...]) -> None:
        self.context = context
        self.members: list[tuple[int, list[int]]] = []  # (request index, continuation tokens)

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) - 1 for _, c in self.members)


def build_trees(requests: list[tuple[Any, list[int], list[int]]]) -> list[_Tree]:
    """Group requests by identical context tokens, in first-seen order."""
    trees: dict[tuple[int, ...], _Tree] = {}
    for i, (_, ctx, cont) in enumerate(requests):
        key = tuple(ctx)
        tree = trees.get(key)
        if tree is None:
            tree = trees[key] = _Tree(key)
        tree.members.append((i, list(cont)))
    return list(trees.values())


def pack_row(trees: list[_Tree]) -> tuple[list[int], list[int], list[int], list[int], list[tuple[int, list[int], int]]]:
    """One packed row: token ids, position ids, each token's tree and branch (0: the tree's
    context, b: its b-th continuation) and, per request, the row positions whose logits predict
    its continuation tokens."""
    tokens: list[int] = []
    positions: list[int] = []
    tree_of: list[int] = []
    branch_of: list[int] = []
    wanted: list[tuple[int, list[int], int]] = []  # (request index, logit row positions, tree start)
    for t, tree in enumerate(trees):
        start = len(tokens)
        tokens += tree.context
        positions += range(len(tree.context))
        tree_of += [t] * len(tree.context)
        branch_of += [0] * len(tree.context)
        last_ctx = start + len(tree.context) - 1
        for b, (req, cont) in enumerate(tree.members, start=1):
            body = cont[:-1]
            first = len(tokens)
            tokens += body
            positions += range(len(tree.context), len(tree.context) + len(body))
            tree_of += [t] * len(body)
            branch_of += [b] * len(body)
            wanted.append((req, [last_ctx] + list(range(first, first + len(body))), start))
    return tokens, positions, tree_of, branch_of, wanted


def tree_mask(tree_of: list[int], branch_of: list[int]) -> Any:
    """Boolean (1, 1, L, L) mask: key k is visible from query q when k <= q, both are in the same
    tree, and k is in the context or in q's branch."""
    import torch

    tree = torch.tensor(tree_of)
    branch = torch.tensor(branch_of)
    n = len(tree_of)
    idx = torch.arange(n)
    causal = idx[None, :] <= idx[:, None]
    same_tree = tree[None, :] == tree[:, None]
    visible_branch = (branch[None, :] == 0) | (branch[None, :] == branch[:, None])
    return (causal & same_tree & visible_branch)[None, None]


def score_packed(model: Any, requests: list[tuple[Any, list[int], list[int]]], *, vocab_size: int,
                 pack_tokens: int = PACK_TOKENS, device: Any = None, rows_per_call: int = 1,
                 on_row: Any = None) -> list[tuple[float, bool]]:
    """(sum of continuation log-probs, continuation is the greedy one) for every request.

    ``rows_per_call`` packed rows go through the model together (right-padded; a padding token
    sees only itself): 1 on a CPU, where one row already fills the cores; on a GPU a call of one
    256-token row leaves the device idle (:func:`packing_for`)."""
    import torch
    import torch.nn.functional as F

    trees = sorted(build_trees(requests), key=lambda t: -t.length)
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    rows: list[list[_Tree]] = []
    for tree in trees:  # longest first; a tree longer than a row gets a row of its own
        if rows and sum(t.length for t in rows[-1]) + tree.length <= pack_tokens:
            rows[-1].append(tree)
        else:
            rows.append([tree])
    for first in range(0, len(rows), max(1, rows_per_call)):
        packed = [pack_row(row) for row in rows[first:first + max(1, rows_per_call)]]
        width = max(len(p[0]) for p in packed)
        keep = sorted({p for *_, wanted in packed for _, ps, _ in wanted for p in ps})
        where = {p: i for i, p in enumerate(keep)}
        ids = torch.zeros((len(packed), width), dtype=torch.long)
        pos = torch.zeros((len(packed), width), dtype=torch.long)
        mask = torch.eye(width, dtype=torch.bool).repeat(len(packed), 1, 1, 1) \
            if len(packed) > 1 else None
        for r, (tokens, positions, tree_of, branch_of, _) in enumerate(packed):
            ids[r, :len(tokens)] = torch.tensor(tokens)
            pos[r, :len(tokens)] = torch.tensor(positions)
            if mask is not None:
                mask[r, 0, :len(tokens), :len(tokens)] = tree_mask(tree_of, branch_of)[0, 0]
        if mask is None:
            mask = tree_mask(packed[0][2], packed[0][3])
        with torch.no_grad():
            out = model(
                input_ids=ids.to(device),
                position_ids=pos.to(device),
                attention_mask=mask.to(device),
                logits_to_keep=torch.tensor(keep, device=device),
                use_cache=False,
            )
        for r, (*_, wanted) in enumerate(packed):
            logprobs = F.log_softmax(out.logits[r, :, :vocab_size].float(), dim=-1)
            for req, ps, _ in wanted:
                cont = torch.tensor(requests[req][2], device=logprobs.device)
                rows_lp = logprobs[[where[p] for p in ps]]
                greedy = bool((rows_lp.argmax(dim=-1) == cont).all())
                results[req] = (float(rows_lp.gather(1, cont[:, None]).sum()), greedy)
            if on_row is not None:
                on_row(len(wanted))
    return results  # type: ignore[return-value]


def packing_for(device: Any, batch_size: int) -> tuple[int, int]:
    """(tokens per packed row, rows per model call) for a device: one 256-token row a call on a
    CPU (measured best here, bench/eval_scoring.py); on a GPU, ``batch_size`` rows of 1,024 tokens,
    so a call has work for the device while the quadratic, masked-out part of each row's attention
    stays a small share."""
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    return (PACK_TOKENS, 1) if kind != "cuda" else (1024, max(1, batch_size))


def packed_lm_class() -> type:
    """``HFLM`` with packed log-likelihood scoring (built lazily: lm-eval is a heavy import)."""
    from lm_eval.models.huggingface import HFLM

    class PackedHFLM(HFLM):
        """lm-eval's HFLM; log-likelihood requests are scored by :func:`score_packed`. lm-eval's
        own progress bars show only when hubsdd logs at debug level (``-v``)."""

        def _quiet(self, disable_tqdm: bool) -> bool:
            return disable_tqdm or not logging.getLogger("hubsdd").isEnabledFor(logging.DEBUG)

        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
            return super().loglikelihood(requests, disable_tqdm=self._quiet(disable_tqdm))

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
            return super().loglikelihood_rolling(requests, disable_tqdm=self._quiet(disable_tqdm))

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list:
            return super().generate_until(requests, disable_tqdm=self._quiet(disable_tqdm))

        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                                  override_bs: int | None = None) -> list[tuple[float, bool]]:
            too_long = any(len(c) + len(x) > self.max_length + 1 for _, c, x in requests)
            if self.backend != "causal" or too_long or not packing_supported(self.model):
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            from ...core import progress

            with progress.task("scoring (lm-eval requests)", total=len(requests), unit="request") as bar:
                pack_tokens, rows_per_call = packing_for(self.device, int(self.batch_size) if str(
                    self.batch_size).isdigit() else 1)
                answers = score_packed(self.model, requests, vocab_size=self.vocab_size, device=self.device,
                                       pack_tokens=pack_tokens, rows_per_call=rows_per_call, on_row=bar.advance)
            for (request_str, _, _), answer in zip(requests, answers):
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
            return answers

    return PackedHFLM
