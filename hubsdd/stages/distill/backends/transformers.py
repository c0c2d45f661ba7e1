"""Teacher generation with a transformers model on this machine, in continuous batches.

Rows of one KV cache are refilled as soon as they finish (see :class:`TransformersBackend`); the
cache layer that lets rows come and go is :mod:`.kv_rows`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from ....core.chat import Messages, chat_prompt_ids
from ....core.errors import StageError
from ....core.models import fast_cpu_linears
from ....core.recipe import GenerationSettings
from .engine import Generation, stop_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class TransformersBackend:
    """Generation with a transformers model on this machine, in continuous batches.

    Up to ``batch_size`` prompts are in flight at once, each in its own row of one KV cache. When a
    row finishes (end of turn or ``max_new_tokens``) the next prompt is prefilled and takes its row
    at once, so the batch never waits for its longest answer and no compute goes to finished rows:
    with static batches, rows that stopped early kept computing until the longest one finished.
    Prompts go longest first, so a newcomer always fits in the columns the cache already has (rows
    are right-aligned, left-padded) and an out-of-memory batch fails at once, not at the end.

    The tokens every prompt of a call starts with (chat template, system prompt, the head of the
    rewrite template) are prefilled once and shared, not recomputed for every prompt.

    Caches that are not plain full attention (sliding windows, hybrid layers: gemma2, gemma3) fall
    back to static, length-sorted batches through ``model.generate``; ``continuous=False`` asks for
    those everywhere (the benchmark compares both). Either way the output of a call depends only on
    its prompts and the settings, so greedy results are reproducible.

    ``generation.paged`` hands the call to transformers' own continuous batching instead
    (:meth:`_generate_paged`): on a GPU it captures CUDA graphs, which this engine does not (one
    decode step of a 135M model is bound by launching its kernels, ~100 ms on an H200 whatever the
    batch); on the CPU it is ~3x slower than this engine (BENCHMARKS.md)."""

    name = "transformers"

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                 settings: GenerationSettings, *, continuous: bool | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.paged = settings.paged
        self.continuous = (not self.paged and self.supports_continuous(model)) if continuous is None else continuous
        if self.continuous and self.paged:
            raise StageError("distill: `generation.paged` and hubsdd's continuous batching are two engines; "
                             "pick one", fix="leave `continuous` unset with `paged: true`")
        if self.continuous and not self.supports_continuous(model):
            raise StageError(f"distill: continuous batching needs a plain full-attention KV cache; "
                             f"{model.config.model_type} has sliding-window or hybrid layers",
                             fix="leave `continuous` unset: such models run in static batches")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = stop_token_ids(getattr(model, "generation_config", None), tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise StageError("distill: the teacher's tokenizer has no chat template",
                             fix="use an instruct/chat base model, or add a chat_template to its tokenizer_config.json")

    def encode(self, conversation: Messages) -> list[int]:
        return chat_prompt_ids(self.tokenizer, conversation)

    def generate(self, conversations: Sequence[Messages], *, seed: int) -> list[Generation]:
        encoded = [self.encode(c) for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        run = self._generate_paged if self.paged else self._generate_continuous if self.continuous else \
            self._generate_static
        with fast_cpu_linears(self.model):
            generated = run(encoded, order, seed)
        return [self._finish(tokens) for tokens in generated]

    @staticmethod
    def supports_continuous(model: "PreTrainedModel") -> bool:
        """Whether every layer's cache is plain full attention, which row refilling needs."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        layers = DynamicCache(config=model.config).layers
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    # ------------------------------------------------------------------ continuous batching

    def _generate_continuous(self, encoded: list[list[int]], order: list[int], seed: int) -> list[list[int]]:
        import torch
        from collections import deque
        from transformers.cache_utils import Cache, DynamicCache

        from .kv_rows import RowsLayer

        s = self.settings
        device = next(self.model.parameters()).device
        pick = self._sampler(seed, device)
        eos = set(self.eos_ids)
        out: list[list[int]] = [[] for _ in encoded]
        pending = deque(order)
        cache = Cache(layer_class_to_replicate=RowsLayer)
        rows: list[int] = []  # the prompt each cache row is generating for
        mask = torch.zeros((0, 0), dtype=torch.long, device=device)  # 1 where a row's token is in the cache

        def forward(ids: Any, attention: Any, positions: Any, kv: Any) -> list[int]:
            logits = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, cache=kv,
                                use_cache=True, logits_to_keep=1).logits[:, -1]
            return pick(logits).tolist()

        with torch.inference_mode():
            prefix_len, prefix_kv = self._prefill_prefix(encoded, device)
            while True:
                finished = [r for r, i in enumerate(rows) if out[i][-1] in eos or len(out[i]) >= s.max_new_tokens]
                # Finished rows are reused first; below batch_size (the start), new rows are appended.
                free = finished + list(range(len(rows), s.batch_size))
                newcomers = [pending.popleft() for _ in range(min(len(free), len(pending)))]
                for group in self._prefill_groups([encoded[i][prefix_len:] for i in newcomers]):
                    batch, newcomers = newcomers[:len(group)], newcomers[len(group):]
                    slots, free = free[:len(batch)], free[len(batch):]
                    ids, new_mask = self._left_padded(group, device)
                    positions = prefix_len + (new_mask.cumsum(-1) - 1).clamp(min=0)
                    # A row is [shared prefix][left padding][its own tokens]; the mask has the hole.
                    fresh = DynamicCache(ddp_cache_data=[(k.expand(len(group), -1, -1, -1), v.expand(len(group), -1, -1, -1))
                                                         for k, v in prefix_kv]) if prefix_len else DynamicCache()
                    new_mask = torch.cat([new_mask.new_ones((len(group), prefix_len)), new_mask], dim=-1)
                    firsts = forward(ids, new_mask, positions, fresh)
                    mask = self._place(cache, mask, slots, fresh, new_mask)
                    for r, i, token in zip(slots, batch, firsts):
                        out[i].append(token)
                        rows[r:r + 1] = [i]  # replaces row r, or appends when r == len(rows)
                gone = [r for r in finished if r in free]  # finished, and no prompt left to take the row
                if gone:
                    keep = torch.tensor([r for r in range(len(rows)) if r not in gone], dtype=torch.long, device=device)
                    rows = [i for r, i in enumerate(rows) if r not in gone]
                    mask = mask[keep]
                    for layer in cache.layers:
                        layer.keep_rows(keep)
                if finished and rows:  # drop the columns no row uses any more
                    lead = int(mask.any(0).to(torch.int8).argmax())
                    mask = mask[:, lead:]
                    for layer in cache.layers:
                        layer.drop_columns(lead)
                if not rows:
                    return out
                if any(out[i][-1] in eos or len(out[i]) >= s.max_new_tokens for i in rows):
                    continue  # a newcomer finished with its first token
                # One decode step for every row. A row's next position is its number of real tokens.
                positions = mask.sum(-1, keepdim=True)
                last = torch.tensor([[out[i][-1]] for i in rows], dtype=torch.long, device=device)
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
                for i, token in zip(rows, forward(last, mask, positions, cache)):
                    out[i].append(token)

    MIN_SHARED_PREFIX = 16

    def _prefill_prefix(self, encoded: list[list[int]], device: Any) -> tuple[int, list[tuple[Any, Any]]]:
        """The tokens every prompt of the call starts with (chat template, system prompt, the rewrite
        template's head: 55 of ~300 tokens for SmolLM2 with the math template), prefilled once; each
        newcomer's prefill then starts after them. Returns their count and every layer's keys and
        values, or (0, []) when the shared part is too short to be worth it."""
        import os

        import torch
        from transformers.cache_utils import DynamicCache

        # At least one token of each prompt is prefilled with the prompt, so it yields first logits.
        shared = len(os.path.commonprefix(encoded)) if len(encoded) > 1 else 0
        shared = min(shared, min(len(seq) for seq in encoded) - 1)
        if shared < self.MIN_SHARED_PREFIX:
            return 0, []
        ids = torch.tensor([encoded[0][:shared]], dtype=torch.long, device=device)
        cache = DynamicCache()
        self.model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache, use_cache=True, logits_to_keep=1)
        return shared, [(layer.keys, layer.values) for layer in cache.layers]

    @staticmethod
    def _prefill_groups(prompts: list[list[int]], max_tokens: int = 8192, max_padding: float = 0.1) -> list[list[list[int]]]:
        """Split longest-first prompts into prefill batches of at most ``max_tokens`` padded tokens
        (peak memory) with at most ``max_padding`` of them padding (wasted compute)."""
        groups: list[list[list[int]]] = []
        for prompt in prompts:
            group = groups[-1] if groups else None
            if group is not None:
                width, real = len(group[0]), sum(map(len, group)) + len(prompt)
                padded = width * (len(group) + 1)
                if padded <= max_tokens and padded - real <= max_padding * padded:
                    group.append(prompt)
                    continue
            groups.append([prompt])
        return groups

    @staticmethod
    def _place(cache: Any, mask: Any, slots: list[int], fresh: Any, new_mask: Any) -> Any:
        """Put freshly prefilled prompts into cache rows ``slots``, right-aligned: a slot below the row
        count overwrites that (finished) row, the others are appended in order. Returns the mask."""
        import torch

        from .kv_rows import RowsLayer

        n, width = mask.shape
        new_width = new_mask.shape[1]
        if new_width > width:  # widen the cache on the left; the new columns are masked for old rows
            mask = torch.cat([mask.new_zeros((n, new_width - width)), mask], dim=-1)
            for layer in cache.layers:
                layer.pad_columns(new_width - width)
            width = new_width
        placed = mask.new_zeros((len(slots), width))
        placed[:, width - new_width:] = new_mask
        while len(cache.layers) < len(fresh.layers):
            cache.layers.append(RowsLayer())
        replace = [k for k, r in enumerate(slots) if r < n]
        append = [k for k, r in enumerate(slots) if r >= n]
        if replace:
            rows = torch.tensor([slots[k] for k in replace], dtype=torch.long, device=mask.device)
            picked = torch.tensor(replace, dtype=torch.long, device=mask.device)
            for layer, new in zip(cache.layers, fresh.layers):
                layer.write_rows(rows, new.keys.index_select(0, picked), new.values.index_select(0, picked))
            mask[rows] = placed.index_select(0, picked)
        if append:
            picked = torch.tensor(append, dtype=torch.long, device=mask.device)
            for layer, new in zip(cache.layers, fresh.layers):
                layer.append_rows(new.keys.index_select(0, picked), new.values.index_select(0, picked), width)
            mask = torch.cat([mask, placed.index_select(0, picked)], dim=0)
        return mask

    def _sampler(self, seed: int, device: Any) -> Callable[[Any], Any]:
        """Greedy argmax, or temperature / top-p sampling from a generator seeded for this call."""
        import torch

        s = self.settings
        if not s.do_sample:
            return lambda logits: logits.argmax(-1)
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        warpers = [TemperatureLogitsWarper(s.temperature)] + ([TopPLogitsWarper(s.top_p)] if s.top_p < 1 else [])
        generator = torch.Generator(device=device).manual_seed(seed)

        def sample(logits: Any) -> Any:
            scores = logits.float()
            for warper in warpers:
                scores = warper(None, scores)
            return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)

        return sample

    def _left_padded(self, sequences: list[list[int]], device: Any) -> tuple[Any, Any]:
        import torch

        width = max(len(seq) for seq in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
        return ids.to(device), mask.to(device)

    # ------------------------------------------------------------------ transformers' paged engine

    PAGE_TOKENS = 64  # page size of the paged cache on the CPU (transformers' default, 256, is sized for GPUs)

    def _generate_paged(self, encoded: list[list[int]], order: list[int], seed: int) -> list[list[int]]:
        """One call of transformers' ``generate_batch``: ``batch_size`` requests in flight, greedy or
        sampled as the settings say, the same stop tokens and token budget as this engine. transformers
        sizes its cache from the accelerator's free memory; on the CPU it would take a share of the
        whole RAM, so there the cache holds exactly the rows in flight. A request that fails is an
        error here (``generate_batch`` only logs it)."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        s = self.settings
        kwargs: dict[str, Any] = dict(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample,
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids)
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=0)
        paging: dict[str, Any] = dict(max_requests_per_batch=s.batch_size, drop_unsupported_processors=False,
                                      seed=seed if s.do_sample else None)
        device = next(self.model.parameters()).device.type
        if device == "cuda":
            # transformers turns graphs off by default for attention that needs a mask (sdpa, the
            # default without flash-attn); the per-step launch cost they remove is why paged is used.
            paging["use_cuda_graph"] = True
        if device == "cpu":
            longest_prompt = max(map(len, encoded))
            pages = -(-(longest_prompt + s.max_new_tokens) // self.PAGE_TOKENS)
            paging.update(page_size=self.PAGE_TOKENS, num_blocks=min(s.batch_size, len(encoded)) * pages + 1,
                          max_batch_tokens=longest_prompt + s.batch_size)
        inputs = [encoded[i] for i in order]  # longest first, as this engine takes them
        results = list(self.model.generate_batch(
            inputs, generation_config=GenerationConfig(**kwargs),
            continuous_batching_config=ContinuousBatchingConfig(**paging), max_new_tokens=s.max_new_tokens,
        ).values())  # in the order of the inputs
        errors = [r.error for r in results if r.error]
        if len(results) != len(inputs) or errors:
            raise StageError(f"distill: transformers' generate_batch returned {len(results) - len(errors)} of "
                             f"{len(inputs)} generations" + (f" ({errors[0]})" if errors else ""),
                             fix="rerun (finished shards are kept), or leave out `distill.generation.paged`")
        out: list[list[int]] = [[] for _ in encoded]
        for i, result in zip(order, results):
            out[i] = list(result.generated_tokens)
        return out

    # ------------------------------------------------------------------ static batches

    def _generate_static(self, encoded: list[list[int]], order: list[int], seed: int) -> list[list[int]]:
        import torch
        from transformers import GenerationConfig

        s = self.settings
        kwargs: dict[str, Any] = dict(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample, use_cache=True,
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids)
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=0)
        config = GenerationConfig(**kwargs)
        device = next(self.model.parameters()).device
        out: list[list[int]] = [[] for _ in encoded]
        for b, start in enumerate(range(0, len(order), s.batch_size)):
            batch = order[start:start + s.batch_size]
            ids, mask = self._left_padded([encoded[i] for i in batch], device)
            if s.do_sample:
                torch.manual_seed(seed * 1_000_003 + b)
            with torch.inference_mode():
                generated = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row, i in enumerate(batch):
                out[i] = generated[row, ids.shape[1]:].tolist()
        return out

    def _finish(self, tokens: list[int]) -> Generation:
        eos = set(self.eos_ids)
        end = next((k for k, t in enumerate(tokens) if t in eos), None)
        if end is None:
            kept, n, reason = tokens, len(tokens), "length" if len(tokens) >= self.settings.max_new_tokens else "stop"
        else:
            kept, n, reason = tokens[:end], end + 1, "stop"
        text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
        return Generation(text, n, reason)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
