"""Self-data distillation: the unpruned model rewrites the training responses (SDFT, Yang et al. 2024).

For every training example the *teacher* (the base model, before pruning) is shown the instruction
and the original response as a reference, and asked for its own answer (``templates/distill_*.md.j2``).
Fine-tuning the pruned model on answers phrased the way the base model would phrase them keeps the
data close to the model's own distribution, which is what recovers quality (arXiv 2410.09982).

Selection keeps a rewrite only if it is usable training data; otherwise the original response is
used. The rules, in order (the first that fires is the ``reason``):

``empty``               the rewrite is blank.
``truncated``           generation stopped at ``max_new_tokens``: an incomplete answer.
``mentions-reference``  the rewrite talks about the prompt scaffolding instead of answering
                        (any of :data:`REJECTION_PHRASES`, case-insensitive).
``no-label``            the checker cannot find a gold answer in the label (or original response).
``no-answer``           the checker cannot find an answer in the rewrite.
``wrong-answer``        the rewrite's answer differs from the gold one.

Checkers (``distill.checker``): ``final-number`` (GSM8K: the gold number is after ``####`` in the
label or original response; the rewrite's is its last ``#### N``, else ``\\boxed{N}``, else "the
answer is N", else its last number; compared numerically with commas and ``$`` stripped),
``choice-letter`` (A-E), ``none`` (only the phrase and length rules apply).

Generation runs in shards of ``distill.shard_size`` rows, each written atomically to
``ctx.work_dir`` as soon as it is done. A killed run resumes without regenerating finished shards.
A shard's content depends only on its own rows and the settings (rows are length-sorted and batched
within the shard, continuously: a finished row is refilled with the shard's next prompt; sampling is
seeded per shard), so under greedy decoding a resumed run produces the same dataset as an
uninterrupted one. Larger shards keep the batch full for longer (each shard ends with a tail in
which rows finish and are not replaced).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from . import progress
from .data import get_value, load_rows, resolve_dataset_revision
from .chat import chat_prompt_ids, chat_prompts_ids
from .errors import DataError, StageError
from .models import fast_cpu_linears
from .recipe import DistillSection, GenerationSettings, canonical_json
from .files import atomic_write_bytes
from .runner import StageContext, StageOutput

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("hubsdd.distill")

BUILTIN_TEMPLATES = {"general": "distill_general.md.j2", "math": "distill_math.md.j2"}
DATA_FILE = "data/train.parquet"
VLLM_FIX = "pip install 'hubsdd[vllm]'"

# A rewrite containing one of these talks about the prompt instead of answering it: trained on, it
# would teach the student to mention a reference that never exists at inference time.
REJECTION_PHRASES: tuple[str, ...] = (
    "reference answer",
    "reference solution",
    "reference response",
    "the reference",
    "original answer",
    "original response",
    "original solution",
    "your response",
    "the given answer",
    "the provided answer",
    "the provided solution",
    "as a guide",
)

REASONS = ("empty", "truncated", "mentions-reference", "no-label", "no-answer", "wrong-answer")

Messages = list[dict[str, str]]


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, instruction: str, input: str, reference: str) -> str:
        import jinja2

        env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                 keep_trailing_newline=False)
        try:
            return env.from_string(self.text).render(instruction=instruction, input=input, reference=reference).strip()
        except jinja2.TemplateError as exc:
            raise StageError(f"distill.template: cannot render {self.name}: {exc}",
                             fix="the template may use only `instruction`, `input` and `reference`") from None


def load_template(value: str, base_dir: Path | None = None) -> PromptTemplate:
    """'general' / 'math' from the packaged templates, else a Jinja file (recipe-relative or package:)."""
    from .recipe import resolve_path

    if value in BUILTIN_TEMPLATES:
        text = importlib.resources.files("hubsdd.templates").joinpath(BUILTIN_TEMPLATES[value]).read_text(encoding="utf-8")
        return PromptTemplate(value, text)
    try:
        path = resolve_path(value, base_dir or Path.cwd())
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise StageError(f"distill.template: {value!r} is neither 'general', 'math' nor a readable file ({exc})",
                         fix="use 'general' or 'math', or a path (relative to the recipe) to a Jinja template") from None
    return PromptTemplate(Path(value).name, text)


def user_message(instruction: str, input: str | None) -> str:
    """The user turn a fine-tuned model sees: the instruction, then the input if there is one.

    Shared with the finetune stage so that student training prompts are built one way."""
    return f"{instruction}\n\n{input}" if input else instruction


# --------------------------------------------------------------------------- answer extraction

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_HASH_RE = re.compile(r"####\s*\$?\s*(" + _NUM + ")")
_BOXED_RE = re.compile(r"\\boxed\{\s*\$?\s*(" + _NUM + ")")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:|=)\s*(?:\*\*)?\s*\$?\s*(" + _NUM + ")", re.IGNORECASE)
# The last number: a '-' is a sign only when it does not follow a word character ("10-4" is 10, 4).
_LAST_NUM_RE = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def extract_number(text: str) -> str | None:
    """The final numeric answer of a response, normalized ("1,000.0" -> "1000"), or None.

    In order: the last ``#### N`` (GSM8K), ``\\boxed{N}``, "the answer is N" / "answer: N", the
    last number in the text."""
    if not text:
        return None
    for pattern in (_HASH_RE, _BOXED_RE, _ANSWER_IS_RE, _LAST_NUM_RE):
        found = pattern.findall(text)
        if found:
            return normalize_number(found[-1])
    return None


def normalize_number(value: str) -> str | None:
    try:
        number = Decimal(value.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


_LETTER_ONLY_RE = re.compile(r"^\s*\(?([A-E])\)?[.:)]?\s*$")
_ANSWER_LETTER_RE = re.compile(r"answer\s*(?:is|:)\s*(?:option\s*)?(?:\*\*)?\(?([A-E])\)?(?![A-Za-z])", re.IGNORECASE)
_PAREN_LETTER_RE = re.compile(r"\(([A-E])\)")
_LEADING_LETTER_RE = re.compile(r"^\s*([A-E])[.):]\s", re.MULTILINE)


def extract_choice(text: str) -> str | None:
    """The chosen option letter (A-E) of a response, or None.

    In order: the whole text is a letter ("B", "(B)", "B."), the last "answer is B"/"answer: (B)",
    the last "(B)", the last line starting "B." or "B)"."""
    if not text:
        return None
    m = _LETTER_ONLY_RE.match(text)
    if m:
        return m.group(1)
    for pattern in (_ANSWER_LETTER_RE, _PAREN_LETTER_RE, _LEADING_LETTER_RE):
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "final-number": extract_number,
    "choice-letter": extract_choice,
}


def find_rejection_phrase(text: str) -> str | None:
    low = text.lower()
    return next((p for p in REJECTION_PHRASES if p in low), None)


@dataclass(frozen=True)
class Verdict:
    verdict: str  # "accepted" | "rejected"
    reason: str  # "" when accepted, else one of REASONS
    selected: str
    label: str | None  # the gold answer the checker compared against
    answer: str | None  # the answer found in the rewrite


def select(rewrite: str, original: str, *, checker: str, label: str | None = None,
           finish_reason: str = "stop") -> Verdict:
    """Keep the rewrite or fall back to the original response, and say why.

    ``label`` is the gold answer column if the recipe names one; otherwise the checker parses the
    gold answer out of the original response (GSM8K's ``#### N``)."""
    extractor = EXTRACTORS.get(checker)
    gold = None
    if extractor is not None:
        gold = extractor(label if label not in (None, "") else original)
    elif label not in (None, ""):
        gold = str(label)
    answer = extractor(rewrite) if extractor is not None and rewrite else None

    def reject(reason: str) -> Verdict:
        return Verdict("rejected", reason, original, gold, answer)

    if not rewrite or not rewrite.strip():
        return reject("empty")
    if finish_reason == "length":
        return reject("truncated")
    if find_rejection_phrase(rewrite):
        return reject("mentions-reference")
    if extractor is not None:
        if gold is None:
            return reject("no-label")
        if answer is None:
            return reject("no-answer")
        if answer != gold:
            return reject("wrong-answer")
    return Verdict("accepted", "", rewrite.strip(), gold, answer)


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int  # generated tokens, up to and including the end-of-turn token
    finish_reason: str  # "stop" (end of turn) | "length" (hit max_new_tokens)


class GenerationBackend(Protocol):
    """What distillation needs from an inference engine: chat prompts in, completions out, in order.

    ``seed`` makes sampled generations reproducible per call (the distiller passes one per shard)."""

    name: str

    def generate(self, conversations: Sequence[Messages], *, seed: int) -> list[Generation]: ...

    def close(self) -> None: ...


def _eos_ids(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> list[int]:
    ids: list[int] = []
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        ids.extend(value if isinstance(value, (list, tuple)) else [value])
    # Chat models end a turn with a dedicated token that is not always the configured eos.
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None:
            ids.append(tid)
    return sorted(set(int(i) for i in ids))


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
    its prompts and the settings, so greedy results are reproducible."""

    name = "transformers"

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                 settings: GenerationSettings, *, continuous: bool | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.continuous = self.supports_continuous(model) if continuous is None else continuous
        if self.continuous and not self.supports_continuous(model):
            raise StageError(f"distill: continuous batching needs a plain full-attention KV cache; "
                             f"{model.config.model_type} has sliding-window or hybrid layers",
                             fix="leave `continuous` unset: such models run in static batches")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = _eos_ids(model, tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise StageError("distill: the teacher's tokenizer has no chat template",
                             fix="use an instruct/chat base model, or add a chat_template to its tokenizer_config.json")

    def encode(self, conversation: Messages) -> list[int]:
        return chat_prompt_ids(self.tokenizer, conversation)

    def generate(self, conversations: Sequence[Messages], *, seed: int) -> list[Generation]:
        encoded = [self.encode(c) for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        run = self._generate_continuous if self.continuous else self._generate_static
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


def _import_vllm() -> Any:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise StageError("distill.generation.backend: 'vllm' needs the vllm package, which is not installed",
                         fix=VLLM_FIX) from None
    return vllm


def _vllm_worker(model_dir: str, settings: dict, devices: str, inbox: Any, outbox: Any) -> None:
    """One data-parallel replica: its own process pinned to its own GPUs, serving requests until None."""
    import os

    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    backend = VLLMBackend(Path(model_dir), GenerationSettings(**settings), _replica=True)
    while (job := inbox.get()) is not None:
        token_ids, seed = job
        outbox.put(backend._generate_ids(token_ids, seed))


class VLLMBackend:
    """vLLM engine: ``tensor_parallel_size`` GPUs per replica, ``data_parallel_size`` replicas.

    Each data-parallel replica is an independent engine in its own process, pinned to its own
    GPUs; prompts are split evenly between replicas. vLLM is imported only here, so it stays an
    optional extra (``pip install 'hubsdd[vllm]'``). Each request carries its own seed, so sampled
    outputs do not depend on how requests are batched."""

    name = "vllm"

    def __init__(self, model_dir: Path, settings: GenerationSettings, *, _replica: bool = False) -> None:
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        self.settings = settings
        self.model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.llm = None
        self.workers: list[tuple[Any, Any, Any]] = []
        dp, tp = settings.data_parallel_size, settings.tensor_parallel_size
        if dp == 1 or _replica:
            self.llm = vllm.LLM(model=str(self.model_dir), tensor_parallel_size=tp, seed=settings.seed,
                                gpu_memory_utilization=settings.gpu_memory_utilization)
            return
        import multiprocessing as mp
        import os

        ctx = mp.get_context("spawn")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(dp * tp)]
        if len(gpus) < dp * tp:
            raise StageError(f"distill.generation: data_parallel_size {dp} x tensor_parallel_size {tp} needs "
                             f"{dp * tp} GPUs, {len(gpus)} visible",
                             fix="lower data_parallel_size or tensor_parallel_size")
        for r in range(dp):
            inbox, outbox = ctx.Queue(), ctx.Queue()
            proc = ctx.Process(target=_vllm_worker, daemon=True,
                               args=(str(self.model_dir), settings.model_dump(), ",".join(gpus[r * tp:(r + 1) * tp]),
                                     inbox, outbox))
            proc.start()
            self.workers.append((proc, inbox, outbox))

    def _generate_ids(self, token_ids: list[list[int]], seed: int) -> list[tuple[str, int, str]]:
        from vllm import SamplingParams

        s = self.settings
        params = [SamplingParams(n=1, max_tokens=s.max_new_tokens, seed=seed * 1_000_003 + k,
                                 temperature=s.temperature if s.do_sample else 0.0,
                                 top_p=s.top_p if s.do_sample else 1.0)
                  for k in range(len(token_ids))]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=False)
        return [(o.outputs[0].text.strip(), len(o.outputs[0].token_ids),
                 "length" if o.outputs[0].finish_reason == "length" else "stop") for o in outs]

    def generate(self, conversations: Sequence[Messages], *, seed: int) -> list[Generation]:
        ids = chat_prompts_ids(self.tokenizer, conversations)
        if not self.workers:
            return [Generation(*t) for t in self._generate_ids(ids, seed)]
        n = len(self.workers)
        chunks = [ids[r::n] for r in range(n)]
        for r, (_, inbox, _) in enumerate(self.workers):
            inbox.put((chunks[r], seed * 131 + r))
        parts = [outbox.get() for _, _, outbox in self.workers]
        out: list[Generation | None] = [None] * len(ids)
        for r, part in enumerate(parts):
            for k, t in enumerate(part):
                out[r + k * n] = Generation(*t)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        for proc, inbox, _ in self.workers:
            inbox.put(None)
            proc.join(timeout=60)
        self.workers = []
        self.llm = None


def make_backend(ctx: StageContext, settings: GenerationSettings) -> GenerationBackend:
    """The teacher behind the backend the recipe chose: the base model, unpruned."""
    from .models import base_model_dir, default_device, load_base, set_threads

    if settings.backend == "vllm":
        return VLLMBackend(base_model_dir(ctx), settings)
    set_threads()
    model, tok = load_base(ctx, device=default_device())
    return TransformersBackend(model, tok, settings)


# --------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    original: str
    label: str | None


def _as_text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def read_examples(section: DistillSection, base_dir: Path, commit: str | None = None) -> list[Example]:
    """The training examples of ``section.data``; ``commit``: the Hub commit its revision resolved to."""
    cols = section.columns
    fields = {"distill.columns.instruction": cols.instruction, "distill.columns.response": cols.response}
    if cols.input:
        fields["distill.columns.input"] = cols.input
    if cols.label:
        fields["distill.columns.label"] = cols.label
    rows = load_rows(section.data, base_dir, columns=fields, where="distill.data", commit=commit)
    out = []
    for row in rows:
        out.append(Example(
            instruction=_as_text(get_value(row, cols.instruction, None)),
            input=_as_text(get_value(row, cols.input, None)) if cols.input else "",
            original=_as_text(get_value(row, cols.response, None)),
            label=_as_text(get_value(row, cols.label, None)) if cols.label else None,
        ))
    empty = sum(1 for e in out if not e.instruction.strip() or not e.original.strip())
    if empty == len(out):
        raise DataError(f"distill.columns: every row has an empty instruction or response in {section.data.path or section.data.dataset}",
                        fix="check distill.columns.instruction and distill.columns.response")
    return out


SHARD_SCHEMA_FIELDS = (("row", "int64"), ("rewrite", "string"), ("tokens", "int64"), ("finish_reason", "string"))
DATA_FIELDS = (("instruction", "string"), ("input", "string"), ("original", "string"), ("rewrite", "string"),
               ("selected", "string"), ("verdict", "string"), ("reason", "string"), ("label", "string"),
               ("answer", "string"), ("finish_reason", "string"), ("tokens", "int64"))


def _schema(fields: tuple[tuple[str, str], ...]) -> Any:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in fields])


def _write_parquet(path: Path, records: list[dict], fields: tuple[tuple[str, str], ...], meta: dict) -> None:
    """Atomically: a reader (or a resumed run) sees a whole shard or none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records, schema=_schema(fields))
    table = table.replace_schema_metadata({b"hubsdd": json.dumps(meta, sort_keys=True, default=str).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _read_shard(path: Path, key: str) -> tuple[list[dict], dict] | None:
    """A finished shard's rows and metadata, or None when it is absent, torn, or from other inputs."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"hubsdd", b"{}"))
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    return table.to_pylist(), meta


def shard_key(prompts: list[str], settings: GenerationSettings, teacher: str, index: int) -> str:
    """What a shard's content depends on: its prompts, the decoding settings, the teacher, its seed."""
    payload = {"prompts": prompts, "generation": settings.model_dump(mode="json"), "teacher": teacher, "index": index}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def run_distill(ctx: StageContext, *, backend: GenerationBackend | None = None,
                on_shard: Callable[[int, int, bool], None] | None = None) -> StageOutput:
    """Entry of the ``distill`` stage.

    ``backend`` replaces the one the recipe names (notebooks, tests); ``on_shard(index, total,
    resumed)`` is called after each shard is on disk (progress bars, tests that simulate a kill)."""
    started = time.time()
    section: DistillSection = ctx.section
    settings = section.generation
    base = ctx.input("base")
    teacher = base.outputs.get("hub_id") or Path(str(base.outputs.get("model_dir", "base"))).name
    teacher_sha = base.outputs.get("commit_sha")
    template = load_template(section.template, ctx.recipe.source_dir)
    # A Hub dataset is read at the commit its revision names now, and that commit is recorded.
    source_sha = resolve_dataset_revision(section.data, "distill.data") if section.data.dataset else None
    examples = read_examples(section, ctx.recipe.source_dir, source_sha)
    prompts = [template.render(e.instruction, e.input, e.original) for e in examples]

    shard_dir = ctx.work_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    size = section.shard_size
    bounds = [(start, min(start + size, len(examples))) for start in range(0, len(examples), size)]
    generations: list[dict] = []
    gen_seconds = 0.0
    resumed = 0
    teacher_identity = f"{teacher}@{teacher_sha or base.data.get('fingerprint', '')}"
    own_backend = backend is None
    try:
        with progress.task("teacher rewrites", total=len(prompts), unit="row") as bar:
            for k, (lo, hi) in enumerate(bounds):
                key = shard_key(prompts[lo:hi], settings, teacher_identity, k)
                path = shard_dir / f"shard-{k:05d}.parquet"
                found = _read_shard(path, key) if path.exists() else None
                if found is not None:
                    rows, meta = found
                    resumed += 1
                else:
                    if backend is None:
                        backend = make_backend(ctx, settings)
                    t0 = time.perf_counter()
                    outs = backend.generate([[{"role": "user", "content": p}] for p in prompts[lo:hi]],
                                            seed=settings.seed + k)
                    seconds = time.perf_counter() - t0
                    rows = [{"row": lo + j, "rewrite": g.text, "tokens": g.tokens, "finish_reason": g.finish_reason}
                            for j, g in enumerate(outs)]
                    meta = {"key": key, "seconds": seconds, "tokens": sum(g.tokens for g in outs),
                            "backend": backend.name}
                    _write_parquet(path, rows, SHARD_SCHEMA_FIELDS, meta)
                    log.info("distill: shard %d/%d, %d rows, %.1f tok/s", k + 1, len(bounds), hi - lo,
                             meta["tokens"] / max(seconds, 1e-9))
                gen_seconds += float(meta.get("seconds", 0.0))
                tok_s = float(meta.get("tokens", 0)) / max(float(meta.get("seconds", 0.0)), 1e-9)
                bar.advance(hi - lo, tok_s=round(tok_s, 1))
                generations.extend(rows)
                if on_shard is not None:
                    on_shard(k, len(bounds), found is not None)
    finally:
        if own_backend and backend is not None:
            backend.close()

    records = []
    reasons: Counter[str] = Counter()
    for gen in generations:
        ex = examples[gen["row"]]
        v = select(gen["rewrite"], ex.original, checker=section.checker, label=ex.label,
                   finish_reason=gen["finish_reason"])
        if v.verdict == "rejected":
            reasons[v.reason] += 1
        records.append({"instruction": ex.instruction, "input": ex.input, "original": ex.original,
                        "rewrite": gen["rewrite"], "selected": v.selected, "verdict": v.verdict,
                        "reason": v.reason, "label": v.label if v.label is not None else ex.label,
                        "answer": v.answer, "finish_reason": gen["finish_reason"], "tokens": gen["tokens"]})

    generation = settings.model_dump(mode="json")
    provenance = {
        "teacher": teacher, "teacher_sha": teacher_sha,
        "template_name": template.name, "template_sha256": template.sha256,
        "checker": section.checker, "rejection_phrases": list(REJECTION_PHRASES),
        "generation": generation, "source": section.data.model_dump(mode="json", exclude_none=True),
        "source_sha": source_sha,
    }
    _write_parquet(ctx.out_dir / DATA_FILE, records, DATA_FIELDS, provenance)

    n = len(records)
    accepted = sum(1 for r in records if r["verdict"] == "accepted")
    tokens = sum(r["tokens"] for r in records)
    metrics = {
        "rows": n,
        "accepted": accepted,
        "rejected": n - accepted,
        "acceptance_rate": round(accepted / n, 4) if n else 0.0,
        "rejection_reasons": {r: reasons[r] for r in REASONS if reasons[r]},
        "tokens_generated": tokens,
        "mean_rewrite_tokens": round(tokens / n, 1) if n else 0.0,
        "generation_seconds": round(gen_seconds, 3),
        "tokens_per_second": round(tokens / gen_seconds, 2) if gen_seconds > 0 else None,
        "shards": len(bounds),
        "shards_resumed": resumed,
        "seconds": round(time.time() - started, 3),
    }
    outputs = {
        "data": DATA_FILE,
        "template_name": template.name,
        "template_sha256": template.sha256,
        "template_text": template.text,
        "teacher": teacher,
        "teacher_sha": teacher_sha,
        "source": section.data.model_dump(mode="json", exclude_none=True),
        "source_sha": source_sha,
        "columns": section.columns.model_dump(mode="json"),
        "data_license": section.data_license,
        "checker": section.checker,
        "rejection_phrases": list(REJECTION_PHRASES),
        "generation": generation,
    }
    return StageOutput(outputs=outputs, metrics=metrics)
