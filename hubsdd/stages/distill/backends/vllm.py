"""Teacher generation with vLLM on GPUs: ``tensor_parallel_size`` GPUs per engine,
``data_parallel_size`` engines, each in its own process.

vLLM is imported only here, so it stays an optional extra (``pip install 'hubsdd[vllm]'``).

Replicas are ordinary (non-daemon) processes: vLLM >= 0.8 starts an engine-core child process even
at tensor-parallel 1, and Python forbids a daemon process to have children (vLLM issue #18308).
A replica reports its own exceptions back; the parent polls its replicas while it waits, so one
that dies without a word (killed for memory, a crash in native code) ends the stage with an error
naming it instead of a silent hang. Replicas are always stopped, on error as on success.
"""

from __future__ import annotations

import json
import logging
import os
import queue
from pathlib import Path
from typing import Any, Sequence

from ....core.chat import Messages, chat_prompts_ids
from ....core.devices import device_memory_used, visible_gpus
from ....core.errors import StageError
from ....core.recipe import GenerationSettings
from .engine import Generation, stop_token_ids

log = logging.getLogger("hubsdd.distill")

VLLM_FIX = "pip install 'hubsdd[vllm]'"
POLL_SECONDS = 5.0  # how often a parent waiting for replicas checks that they are alive
JOIN_SECONDS = 60.0  # how long a replica may take to shut down before it is terminated


def _import_vllm() -> Any:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise StageError("distill.generation.backend: 'vllm' needs the vllm package, which is not installed",
                         fix=VLLM_FIX) from None
    return vllm


def engine_dtype(recipe_dtype: str, model_dir: Path) -> str:
    """The dtype the transformers backend would load the teacher in (``base.dtype``). vLLM's own
    ``auto`` differs (it turns float32 checkpoints into float16), so ``auto`` is resolved the way
    transformers resolves it: the checkpoint's dtype, float32 when it names none."""
    if recipe_dtype != "auto":
        return recipe_dtype
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "auto"
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def teacher_generation_config(model_dir: Path, trust_remote_code: bool) -> Any:
    """The generation config transformers gives the loaded model: its generation_config.json, else
    one derived from config.json."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code))


class _Engine:
    """One vLLM engine in this process."""

    def __init__(self, llm_kwargs: dict, settings: GenerationSettings, stop_ids: list[int]) -> None:
        vllm = _import_vllm()
        self.settings = settings
        self.stop_ids = stop_ids
        self.llm = vllm.LLM(**llm_kwargs)

    def shutdown(self) -> None:
        """Stop the engine: vLLM's own shutdown where this version has one (``LLM.shutdown``, else the
        V1 engine core's), then drop it and give its cached GPU memory back."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        for owner in (llm, engine, getattr(engine, "engine_core", None)):
            stop = getattr(owner, "shutdown", None)
            if callable(stop):
                try:
                    stop()
                except Exception as exc:  # noqa: BLE001 -- a failed shutdown must not hide the stage's result
                    log.warning("vLLM engine shutdown: %s", exc)
                break
        del llm, engine
        from ....core.models import free_memory

        free_memory()

    def generate(self, token_ids: list[list[int]], seed: int) -> list[tuple[str, int, str]]:
        from vllm import SamplingParams

        s = self.settings
        params = [SamplingParams(n=1, max_tokens=s.max_new_tokens, seed=seed * 1_000_003 + k,
                                 temperature=s.temperature if s.do_sample else 0.0,
                                 top_p=s.top_p if s.do_sample else 1.0, stop_token_ids=list(self.stop_ids))
                  for k in range(len(token_ids))]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=False)
        return [(o.outputs[0].text.strip(), len(o.outputs[0].token_ids),
                 "length" if o.outputs[0].finish_reason == "length" else "stop") for o in outs]


def _replica_main(llm_kwargs: dict, settings: dict, stop_ids: list[int], devices: str, inbox: Any,
                  outbox: Any) -> None:
    """One data-parallel replica, pinned to its own GPUs: says ("ready", None) once its engine is up,
    answers each job with ("done", outputs) until it gets None; ("error", traceback) ends it."""
    import signal
    import sys
    import traceback

    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    # Terminated, exit through Python, so the engine's own child processes are shut down too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    engine = None
    try:
        engine = _Engine(llm_kwargs, GenerationSettings(**settings), stop_ids)
        outbox.put(("ready", None))
        while (job := inbox.get()) is not None:
            outbox.put(("done", engine.generate(*job)))
    except Exception:
        outbox.put(("error", traceback.format_exc()))
    finally:
        if engine is not None:
            engine.shutdown()


class VLLMBackend:
    """vLLM engines: ``tensor_parallel_size`` GPUs per replica, ``data_parallel_size`` replicas.

    Each data-parallel replica is an independent engine in its own process, pinned to its own
    GPUs; prompts are split evenly between replicas. Each request carries its own seed, so sampled
    outputs do not depend on how requests are batched; greedy outputs are not bit-reproducible
    unless vLLM's batch invariance is on (``VLLM_BATCH_INVARIANT=1``).

    Every engine gets the transformers backend's dtype (:func:`engine_dtype`), stop tokens
    (:func:`~hubsdd.stages.distill.backends.stop_token_ids`) and ``trust_remote_code``, and a context just
    long enough for the longest of ``sized_for`` plus ``max_new_tokens`` (vLLM's default, the
    model's full context, 131,072 tokens for Llama-3.1, would not leave room for a KV cache on
    smaller GPUs)."""

    name = "vllm"

    def __init__(self, model_dir: Path, settings: GenerationSettings, *, dtype: str = "auto",
                 trust_remote_code: bool = False, sized_for: Sequence[Messages] = ()) -> None:
        _import_vllm()
        from ....core.models import load_tokenizer

        self.settings = settings
        self.model_dir = Path(model_dir)
        self.tokenizer = load_tokenizer(self.model_dir, trust_remote_code=trust_remote_code)
        self.stop_ids = stop_token_ids(teacher_generation_config(self.model_dir, trust_remote_code), self.tokenizer)
        dp, tp = settings.data_parallel_size, settings.tensor_parallel_size
        self.llm_kwargs: dict[str, Any] = dict(
            model=str(self.model_dir), tensor_parallel_size=tp, seed=settings.seed,
            gpu_memory_utilization=settings.gpu_memory_utilization, dtype=engine_dtype(dtype or "auto", self.model_dir),
            trust_remote_code=trust_remote_code,
            # the recipe's rows in flight: vLLM's default (256 or more) sizes its CUDA graphs and
            # scheduler for a batch the recipe did not ask for
            max_num_seqs=settings.batch_size)
        self.device_memory_used_bytes: int | None = None
        if sized_for:
            longest = max(len(ids) for ids in chat_prompts_ids(self.tokenizer, sized_for))
            self.llm_kwargs["max_model_len"] = longest + settings.max_new_tokens
        self.engine: _Engine | None = None
        self.workers: list[tuple[Any, Any, Any, str]] = []  # (process, inbox, outbox, its GPUs)
        gpus = visible_gpus() if dp * tp > 1 else []
        if dp * tp > 1 and len(gpus) < dp * tp:
            raise StageError(f"distill.generation: data_parallel_size {dp} x tensor_parallel_size {tp} needs "
                             f"{dp * tp} GPUs, {len(gpus)} visible",
                             fix="lower data_parallel_size or tensor_parallel_size to the GPUs this machine has "
                                 "(or list more in CUDA_VISIBLE_DEVICES)")
        if dp == 1:
            self.engine = _Engine(self.llm_kwargs, settings, self.stop_ids)
            return
        self._start_replicas([",".join(gpus[r * tp:(r + 1) * tp]) for r in range(dp)])

    def _start_replicas(self, devices: list[str]) -> None:
        import multiprocessing.util

        ctx = multiprocessing.get_context("spawn")
        # A backend nobody closed still stops its replicas: at exit Python joins every non-daemon
        # child, and an idle replica waits for work forever. Finalizers with an exit priority run
        # before that join.
        multiprocessing.util.Finalize(self, _stop_replicas, args=(self.workers, False), exitpriority=10)
        try:
            for gpus in devices:
                inbox, outbox = ctx.Queue(), ctx.Queue()
                proc = ctx.Process(target=_replica_main, daemon=False, name=f"hubsdd-vllm-replica-{len(self.workers)}",
                                   args=(self.llm_kwargs, self.settings.model_dump(), self.stop_ids, gpus, inbox, outbox))
                proc.start()
                self.workers.append((proc, inbox, outbox, gpus))
            for r in range(len(self.workers)):  # the engines load in parallel; wait until all are up
                self._receive(r)
        except BaseException:
            self.close(graceful=False)
            raise

    def _receive(self, r: int) -> Any:
        """Replica ``r``'s next answer; a StageError as soon as it reports an error or is found dead."""
        proc, _, outbox, gpus = self.workers[r]
        while True:
            try:
                kind, payload = outbox.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                pass
            if not proc.is_alive():
                try:  # it may have said why just before it exited
                    kind, payload = outbox.get(timeout=1.0)
                    break
                except queue.Empty:
                    raise StageError(
                        f"distill.generation: vLLM replica {r} (GPUs {gpus}) exited with code {proc.exitcode} "
                        f"without reporting an error", fix=self._replica_fix()) from None
        if kind == "error":
            log.error("vLLM replica %d (GPUs %s) failed:\n%s", r, gpus, payload)
            last = payload.strip().splitlines()[-1] if payload.strip() else "unknown error"
            raise StageError(f"distill.generation: vLLM replica {r} (GPUs {gpus}) failed: {last}",
                             fix=self._replica_fix())
        return payload

    @staticmethod
    def _replica_fix() -> str:
        return ("the replica's traceback, if it sent one, is in the log; with `distill.generation.data_parallel_size: "
                "1` the engine runs in this process and vLLM's own error is raised there. A negative exit code is "
                "the signal that ended it (-9: killed, usually for host memory)")

    def generate(self, conversations: Sequence[Messages], *, seed: int) -> list[Generation]:
        ids = chat_prompts_ids(self.tokenizer, conversations)
        if self.engine is not None:
            out = [Generation(*t) for t in self.engine.generate(ids, seed)]
            self.device_memory_used_bytes = device_memory_used()
            return out
        n = len(self.workers)
        busy = [r for r in range(n) if ids[r::n]]  # fewer prompts than replicas leaves some idle
        out: list[Generation | None] = [None] * len(ids)
        try:
            for r in busy:
                self.workers[r][1].put((ids[r::n], seed * 131 + r))
            for r in busy:
                for k, t in enumerate(self._receive(r)):
                    out[r + k * n] = Generation(*t)
        except BaseException:
            self.close(graceful=False)
            raise
        self.device_memory_used_bytes = device_memory_used()
        return out  # type: ignore[return-value]

    def close(self, graceful: bool = True) -> None:
        """Stop every replica: asked to finish (``graceful``), then terminated, then killed; shut
        the in-process engine down (its engine-core process and GPU memory), so that the stages
        after this one find the GPU free."""
        _stop_replicas(self.workers, graceful)
        if self.engine is not None:
            self.engine.shutdown()
        self.engine = None


def _stop_replicas(workers: list[tuple[Any, Any, Any, str]], graceful: bool) -> None:
    for proc, inbox, _, _ in workers:
        if graceful and proc.is_alive():
            inbox.put(None)
        else:
            inbox.cancel_join_thread()  # nobody will read what is left in it
    for proc, _, _, _ in workers:
        proc.join(timeout=JOIN_SECONDS if graceful else 0.1)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    workers.clear()
