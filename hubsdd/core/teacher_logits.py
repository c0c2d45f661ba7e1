"""The teacher's top-k next-token log-probabilities, stored once, so that KD trains without the teacher.

The distill stage (``distill.teacher_logits``) runs the teacher once over the sequences the ``loss:
kd`` variants train on and stores, for every position whose next token is a response token, the
``top_k`` largest log-probabilities, their token ids, and the log of the mass of every other token
(the *tail*). The finetune stage (``finetune.kd.teacher_logits``) then trains through TRL's
``SFTTrainer`` with :func:`topk_kd_loss` instead of running the teacher: TRL's own generalized JSD
(``GKDTrainer.generalized_jsd_loss``; forward KL at ``beta: 0``) over k + 1 outcomes, the k kept
tokens and the tail bucket, the student's tail being its mass outside those k tokens. With k covering
the vocabulary this is exactly the live loss; otherwise it is the KL of the coarser distributions,
below the live one by the tail mass times the KL of the two tails (``tests/test_teacher_logits.py``).

Sequences are tokenized as TRL's ``SFTTrainer`` tokenizes a conversational prompt/completion example
(:func:`encode`), without truncation: the teacher's logits on a prefix do not depend on what follows,
so a sequence the trainer truncates to ``max_length`` reads a prefix of the stored positions. At
training time each row of a batch is found by the hash of its tokens (:class:`TeacherLogits`), and its
scored positions are checked against the stored ones: a tokenization that differs fails loudly
instead of pairing a student position with another position's teacher.

Layout (``teacher_logits/`` in the distill stage's folder and in the published dataset): ``index.json``
(format, k, dtype, teacher, tokenizer, shards) and ``shard-NNNNN.safetensors`` per ``distill.shard_size``
rows, with ``input_ids`` (int32, the sequences end to end), ``seq_offsets``, ``starts`` (the first
scored position of each), ``pos_offsets``, ``topk_ids`` (int32, positions x k), ``topk_logprobs``
(positions x k, ``dtype``) and ``tail_logprob`` (float32, log(1 - sum of the k probabilities)).
Shards are built in the stage's work folder and written atomically; a killed build resumes without
redoing finished ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from . import worklog
from .errors import StageError, TeacherLogitsMismatchError
from .files import atomic_write_bytes, atomic_write_json

log = logging.getLogger("hubsdd.teacher_logits")

FORMAT = "hubsdd-teacher-logits/1"
DIR = "teacher_logits"
INDEX = "index.json"
FLOOR = -1e4  # a log-probability that is zero in float32 (exp underflows) but never NaN in a KL term


# --------------------------------------------------------------------------- identity


def teacher_identity(base: Any) -> str:
    """The teacher as a string: its Hub id (or folder name) at its commit, else at the base stage's
    fingerprint (which covers a local model's files). ``base``: the base stage's record."""
    outputs = base.outputs
    name = outputs.get("hub_id") or Path(str(outputs.get("model_dir", "base"))).name
    revision = outputs.get("commit_sha") or base.data.get("fingerprint", "")
    return f"{name}@{revision}"


def tokenizer_identity(tokenizer: Any) -> str:
    """What decides the token ids of a chat, as ``sha256:<prefix>``: the tokenizer's definition
    (vocabulary, merges, normalizer, pre-tokenizer, added tokens; not its padding or truncation
    settings) and its chat template. The same tokenizer saved elsewhere (the pruned model's copy)
    has the same identity."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
    else:
        spec = sorted(tokenizer.get_vocab().items())
    payload = json.dumps({"tokenizer": spec, "chat_template": getattr(tokenizer, "chat_template", None)},
                         sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def tokenizer_name(tokenizer: Any) -> str:
    return Path(str(getattr(tokenizer, "name_or_path", "") or "")).name or "tokenizer"


# --------------------------------------------------------------------------- sequences


def encode(tokenizer: Any, prompt: list[dict], completion: list[dict]) -> tuple[list[int], int]:
    """A conversational prompt/completion example's token ids, and the first position whose next
    token is a completion token, exactly as TRL's ``SFTTrainer`` prepares it (its ``_tokenize`` and
    ``common_prefix_length``), before truncation."""
    from trl.data_utils import _tokenize, common_prefix_length

    kwargs = {"chat_template": None, "tools": None}
    prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True, **kwargs)["input_ids"]
    ids = list(_tokenize(tokenizer, prompt + completion, return_assistant_tokens_mask=False, **kwargs)["input_ids"])
    return ids, max(common_prefix_length(prompt_ids, ids), 1) - 1


def sequence_groups(records: list[dict], data: Iterable[str], tokenizer: Any,
                    shard_size: int) -> list[list[tuple[list[int], int]]]:
    """The sequences the ``kd`` variants of ``data`` train on, per shard of ``shard_size`` rows of
    the distilled dataset, each stored once per shard (a rejected rewrite equals the original)."""
    from .chat import chat_example

    groups = []
    for lo in range(0, len(records), shard_size):
        seen: set[bytes] = set()
        group = []
        for row in records[lo:lo + shard_size]:
            for column in data:
                pair = chat_example(row, column)
                if pair is None:
                    continue
                ids, start = encode(tokenizer, *pair)
                key = sequence_key(ids)
                if key not in seen and len(ids) - 1 > start:
                    seen.add(key)
                    group.append((ids, start))
        groups.append(group)
    return groups


def sequence_key(ids: Iterable[int]) -> bytes:
    import numpy as np

    return hashlib.blake2b(np.asarray(list(ids), dtype=np.int32).tobytes(), digest_size=16).digest()


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class BuildResult:
    dir: Path
    shards: int
    shards_resumed: int
    sequences: int
    positions: int
    seconds: float


def _shard_key(sequences: list[tuple[list[int], int]], settings: Any, teacher: str, tokenizer: str) -> str:
    payload = json.dumps({"format": FORMAT, "sequences": sequences, "top_k": settings.top_k, "dtype": settings.dtype,
                          "teacher": teacher, "tokenizer": tokenizer}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _read_meta(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # noqa: BLE001  a torn or foreign file is simply rebuilt
        return None


def teacher_topk(model: Any, sequences: list[tuple[list[int], int]], top_k: int, batch_size: int,
                 pad_id: int = 0) -> tuple[Any, Any, Any]:
    """The teacher's top-k log-probabilities, their ids and the tail's log-mass at every scored
    position of ``sequences`` (``(ids, first scored position)``), in sequence order."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    parts: dict[int, tuple[Any, Any, Any]] = {}
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            width = max(len(sequences[i][0]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            keep = torch.zeros((len(rows), width), dtype=torch.bool)
            for j, i in enumerate(rows):
                seq, start = sequences[i]
                ids[j, :len(seq)] = torch.tensor(seq)
                mask[j, :len(seq)] = 1
                keep[j, start:len(seq) - 1] = True
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep.to(device),
                           use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            k = min(top_k, logp.shape[-1])
            values, index = logp.topk(k, dim=-1)
            tail = logp.scatter(-1, index, float("-inf")).logsumexp(-1)
            counts = keep.sum(1).tolist()
            for j, (v, x, t) in enumerate(zip(values.split(counts), index.split(counts), tail.split(counts))):
                parts[rows[j]] = (v.cpu(), x.cpu(), t.cpu())
    cat = [torch.cat([parts[i][n] for i in range(len(sequences))]) for n in range(3)]
    return cat[0], cat[1], cat[2]


def write_shard(path: Path, sequences: list[tuple[list[int], int]], values: Any, index: Any, tail: Any,
                meta: dict[str, str], dtype: str) -> None:
    import torch
    from safetensors.torch import save

    lengths = [len(s) for s, _ in sequences]
    counts = [len(s) - 1 - start for s, start in sequences]
    cumsum = lambda xs: torch.tensor([0, *xs], dtype=torch.int64).cumsum(0)  # noqa: E731
    tensors = {
        "input_ids": torch.tensor([t for s, _ in sequences for t in s], dtype=torch.int32),
        "seq_offsets": cumsum(lengths),
        "starts": torch.tensor([start for _, start in sequences], dtype=torch.int64),
        "pos_offsets": cumsum(counts),
        "topk_ids": index.to(torch.int32).contiguous(),
        "topk_logprobs": values.to(getattr(torch, dtype)).contiguous(),
        "tail_logprob": tail.to(torch.float32).contiguous(),
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))


def build(groups: list[list[tuple[list[int], int]]], *, model_loader: Callable[[], Any], settings: Any,
          teacher: str, tokenizer: str, work_dir: Path, tokenizer_label: str = "tokenizer", on_shard: Callable[[int, int, bool], None] | None = None,
          pad_id: int = 0) -> BuildResult:
    """Build (or resume) one shard per group of sequences in ``work_dir``, then its ``index.json``.

    ``model_loader`` is called only when a shard is missing: a resumed build whose shards are all
    done never loads the teacher. ``on_shard(index, total, resumed)`` follows each shard."""
    started = time.time()
    work_dir.mkdir(parents=True, exist_ok=True)
    model = None
    shards, resumed, positions = [], 0, 0
    for n, group in enumerate(groups):
        key = _shard_key(group, settings, teacher, tokenizer)
        name = f"shard-{n:05d}.safetensors"
        path = work_dir / name
        meta = _read_meta(path) if path.exists() else None
        found = meta is not None and meta.get("key") == key
        if found:
            resumed += 1
        else:
            if model is None:
                model = model_loader()
            values, index, tail = teacher_topk(model, group, settings.top_k, settings.batch_size, pad_id)
            meta = {"format": FORMAT, "key": key, "top_k": str(settings.top_k), "teacher": teacher,
                    "tokenizer": tokenizer}
            write_shard(path, group, values, index, tail, meta, settings.dtype)
            worklog.finished(f"teacher-logits shard {n} {key[:12]}")
        count = sum(len(s) - 1 - start for s, start in group)
        positions += count
        shards.append({"file": name, "sequences": len(group), "positions": count})
        if on_shard is not None:
            on_shard(n, len(groups), found)
    index_data = {"format": FORMAT, "top_k": settings.top_k, "dtype": settings.dtype, "data": list(settings.data),
                  "teacher": teacher, "tokenizer": tokenizer, "tokenizer_name": tokenizer_label, "shards": shards}
    atomic_write_json(work_dir / INDEX, index_data)
    del model
    return BuildResult(work_dir, len(groups), resumed, sum(s["sequences"] for s in shards), positions,
                       round(time.time() - started, 3))


# --------------------------------------------------------------------------- reading


class TeacherLogits:
    """A stored cache, checked against this run's teacher and tokenizer, indexed by sequence.

    ``max_length``: the trainer's; a sequence longer than it is found by its first ``max_length``
    tokens (TRL keeps the start)."""

    def __init__(self, folder: Path, *, teacher: str, tokenizer: str, max_length: int | None,
                 where: str = "finetune", tokenizer_label: str = "tokenizer") -> None:
        from safetensors.torch import load_file

        self.folder = Path(folder)
        try:
            index = json.loads((self.folder / INDEX).read_text())
        except (OSError, ValueError) as exc:
            raise StageError(f"{where}: cannot read the teacher log-probabilities in {self.folder}: {exc}",
                             fix="rerun the distill stage: `hubsdd run <recipe> --force distill`") from None
        if index.get("format") != FORMAT:
            raise StageError(f"{where}: {self.folder} holds teacher log-probabilities in format "
                             f"{index.get('format')!r}, not {FORMAT!r}", fix="rerun the distill stage")
        fix = "rerun the distill stage with this run's base model (`hubsdd run <recipe> --force distill`)"
        if index.get("teacher") != teacher:
            raise TeacherLogitsMismatchError("teacher", str(index.get("teacher")), teacher, where=f"{where}: "
                                             f"{self.folder}", fix=fix)
        if index.get("tokenizer") != tokenizer:
            stored = f"{index.get('tokenizer_name', 'tokenizer')} ({index.get('tokenizer')})"
            raise TeacherLogitsMismatchError("tokenizer", stored, f"{tokenizer_label} ({tokenizer})",
                                             where=f"{where}: {self.folder}", fix=fix)
        self.top_k, self.dtype, self.data = int(index["top_k"]), index["dtype"], list(index.get("data", []))
        self.shards = [load_file(str(self.folder / s["file"])) for s in index["shards"]]
        self.lookup_table: dict[bytes, tuple[int, int]] = {}
        for n, shard in enumerate(self.shards):
            ids, offsets = shard["input_ids"], shard["seq_offsets"].tolist()
            for i in range(len(offsets) - 1):
                seq = ids[offsets[i]:offsets[i + 1]]
                if max_length is not None:
                    seq = seq[:max_length]
                self.lookup_table.setdefault(sequence_key(seq.tolist()), (n, i))
        self.where = where

    def gather(self, input_ids: Any, attention_mask: Any, keep: Any) -> tuple[Any, Any, Any]:
        """The stored top-k ids, log-probabilities and tail log-mass at the positions ``keep`` marks
        in a right-padded batch, in ``keep``'s row-major order (that of ``logits_to_keep``)."""
        import torch

        ids_out, values_out, tails_out = [], [], []
        lengths = attention_mask.sum(1).tolist() if attention_mask is not None else [input_ids.shape[1]] * len(input_ids)
        for row in range(input_ids.shape[0]):
            n = int(lengths[row])
            seq = input_ids[row, :n].tolist()
            hit = self.lookup_table.get(sequence_key(seq))
            if hit is None:
                raise StageError(f"{self.where}: a training sequence of {n} tokens is not among the stored teacher "
                                 f"log-probabilities ({self.folder}): its tokenization differs from the one they "
                                 "were computed on", fix="rerun the distill stage with this version of hubsdd and TRL")
            shard = self.shards[hit[0]]
            start = int(shard["starts"][hit[1]])
            p0, p1 = (int(x) for x in shard["pos_offsets"][hit[1]:hit[1] + 2])
            positions = keep[row].nonzero().flatten().tolist()
            if positions != list(range(start, start + len(positions))) or len(positions) > p1 - p0:
                raise StageError(f"{self.where}: the trainer scores positions {positions[:3]}... of a sequence whose "
                                 f"stored teacher log-probabilities start at position {start}: the completion "
                                 "boundary differs from the one they were computed on",
                                 fix="rerun the distill stage with this version of hubsdd and TRL")
            rows = slice(p0, p0 + len(positions))
            ids_out.append(shard["topk_ids"][rows])
            values_out.append(shard["topk_logprobs"][rows])
            tails_out.append(shard["tail_logprob"][rows])
        device = keep.device
        return (torch.cat(ids_out).long().to(device), torch.cat(values_out).float().to(device),
                torch.cat(tails_out).float().to(device))


# --------------------------------------------------------------------------- the loss


def bucket_logprobs(student_logits: Any, topk_ids: Any, topk_logprobs: Any, tail_logprob: Any) -> tuple[Any, Any]:
    """Student and teacher as distributions over k + 1 outcomes (the k stored tokens, then the
    rest), as log-probabilities floored at :data:`FLOOR` (an empty tail is zero, not NaN)."""
    import torch

    logp = torch.log_softmax(student_logits.float(), dim=-1)
    student_top = logp.gather(-1, topk_ids)
    student_tail = logp.scatter(-1, topk_ids, float("-inf")).logsumexp(-1, keepdim=True)
    student = torch.cat([student_top, student_tail], dim=-1).clamp(min=FLOOR)
    teacher = torch.cat([topk_logprobs.float(), tail_logprob.float().unsqueeze(-1)], dim=-1).clamp(min=FLOOR)
    return student, teacher


def topk_kd_loss(student_logits: Any, topk_ids: Any, topk_logprobs: Any, tail_logprob: Any, *, beta: float,
                 num_items_in_batch: Any = None) -> Any:
    """TRL's generalized JSD (``beta: 0`` = forward KL) over the k + 1 outcomes, normalised as the
    live loss is (by ``num_items_in_batch``, else the number of positions)."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer

    student, teacher = bucket_logprobs(student_logits, topk_ids, topk_logprobs, tail_logprob)
    return GKDTrainer.generalized_jsd_loss(student_logits=student, teacher_logits=teacher, beta=beta,
                                           num_items_in_batch=num_items_in_batch)
