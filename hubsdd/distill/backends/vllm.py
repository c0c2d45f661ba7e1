"""Teacher generation with vLLM on GPUs: ``tensor_parallel_size`` GPUs per engine,
``data_parallel_size`` engines, each in its own process.

vLLM is imported only here, so it stays an optional extra (``pip install 'hubsdd[vllm]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ...chat import Messages, chat_prompts_ids
from ...errors import StageError
from ...recipe import GenerationSettings
from . import Generation

VLLM_FIX = "pip install 'hubsdd[vllm]'"


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
