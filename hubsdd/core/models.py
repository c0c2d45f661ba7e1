"""Loading and saving models and tokenizers; the device and dtype of a run; CPU kernels.

Safetensors only: pickle weights (.bin, .pt, .pth, .ckpt) are refused unless the recipe sets
``base.allow_pickle: true``; remote code runs only with ``base.trust_remote_code: true``.

The ``base`` stage itself lives in :mod:`hubsdd.stages.base.stage`; later stages load what it recorded through
:func:`load_base` (reading ``ctx.input("base")``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from . import progress
from .hub_errors import reading_errors
from .errors import ModelLoadError, StageError, UnsafeModelError

if TYPE_CHECKING:  # torch and transformers load lazily: `hubsdd validate` must be quick
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .recipe import Recipe
    from .stage_io import StageContext

log = logging.getLogger("hubsdd.models")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE", "NOTICE.txt", "USE_POLICY.md")
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def torch_dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, DTYPES[name])


def check_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose only weights are pickles (unless allowed), or one with no weights."""
    files = [p.name for p in folder.iterdir() if p.is_file()]
    safetensors = [f for f in files if f.endswith(".safetensors")]
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES) and f != "training_args.bin"]
    if safetensors:
        return
    if pickles and not allow_pickle:
        raise UnsafeModelError(
            f"{folder} has only pickle weights ({', '.join(sorted(pickles)[:3])}); loading them can run arbitrary code",
            fix="convert them to safetensors, or set `base.allow_pickle: true` in the recipe if you trust the source",
        )
    if not pickles:
        raise ModelLoadError(f"{folder} holds no model weights (*.safetensors)", fix="point `base.path` at a saved model folder")


def load_model(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False,
               allow_pickle: bool = False, device: str | None = None) -> "PreTrainedModel":
    """Load a causal LM from a local folder with stock transformers."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json", fix="point at a folder written by save_pretrained")
    check_weights(path, allow_pickle)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UnsafeModelError(
                f"{path} needs custom code from the model repository to load",
                fix="read that code first; then set `base.trust_remote_code: true` in the recipe",
            ) from None
        raise ModelLoadError(f"cannot load the model in {path}: {exc}") from None
    if device:
        model.to(device)
    model.eval()
    return model


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer in {path}: {exc}") from None
    if tok.pad_token is None:
        # Batching needs a pad token; the base has none, so the end token serves while hubsdd runs
        # and save_model takes it out again: a release's tokenizer is the base's.
        tok.pad_token = tok.eos_token
        tok.hubsdd_pad_added = True
    return tok


def save_model(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase | None", out_dir: Path,
               max_shard_size: str = "2GB") -> None:
    """Save as safetensors in a form stock ``from_pretrained`` reloads."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if getattr(model, "hf_quantizer", None) is not None:
        # GGUF weights are already dequantized to plain tensors; transformers still refuses to
        # serialize a model that carries the quantizer, so drop it.
        model.hf_quantizer.remove_quantization_config(model)
    # The Trainer and gradient checkpointing set use_cache=False; a released model wants the cache.
    model.config.use_cache = True
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True
    added = tokenizer is not None and getattr(tokenizer, "hubsdd_pad_added", False)
    pad_id = tokenizer.pad_token_id if added else None
    # the pad hubsdd lent the tokenizer (and the Trainer copied into the config) is not released
    lent = [c for c in (model.config, getattr(model, "generation_config", None))
            if added and c is not None and getattr(c, "pad_token_id", None) == pad_id]
    for c in lent:
        c.pad_token_id = None
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer is not None:
        if added:
            tokenizer.pad_token = None
        try:
            tokenizer.save_pretrained(out_dir)
        finally:
            if added:
                tokenizer.pad_token = tokenizer.eos_token
            for c in lent:
                c.pad_token_id = pad_id


def model_files(folder: Path) -> list[Path]:
    """The files of a saved model folder that belong in a release."""
    keep = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name not in ("training_args.bin", "stage.json"):
            keep.append(p)
    return keep


def model_content_id(folder: Path) -> str:
    """sha256 over the names and sha256 of a model folder's files: equal ids, equal models.

    Keys caches of work done on a model (its evaluation), so the work is reused whichever stage,
    run or recipe produced the same weights."""
    import hashlib

    from .files import sha256_file

    h = hashlib.sha256()
    for p in model_files(Path(folder)):
        h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- the base model


def _snapshot(repo_id: str, revision: str, allow_pickle: bool) -> tuple[Path, str]:
    """Download a Hub model at a revision; return the folder and the resolved commit sha."""
    from huggingface_hub import HfApi, snapshot_download

    fields = dict(repo_id=repo_id, revision=revision, id_field="base.model", revision_field="base.revision",
                  local_fix="use `base.path` with a local copy", kind="model")
    api = HfApi()
    with reading_errors(ModelLoadError, **fields):
        info = api.model_info(repo_id, revision=revision, files_metadata=False)
    names = [s.rfilename for s in (info.siblings or [])]
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    if not has_safetensors and not allow_pickle:
        raise UnsafeModelError(
            f"{repo_id}@{revision} publishes no safetensors weights, only pickle files",
            fix="pick a revision with safetensors, or set `base.allow_pickle: true` if you trust the source",
        )
    ignore = [f"*{s}" for s in PICKLE_SUFFIXES] if has_safetensors or not allow_pickle else None
    ignore = (ignore or []) + ["*.gguf", "*.onnx", "*.msgpack", "*.h5", "original/*"]
    # The card is public while gated weights are behind the license: the download can be refused too.
    with reading_errors(ModelLoadError, **fields):
        folder = snapshot_download(repo_id, revision=info.sha, ignore_patterns=ignore, tqdm_class=progress.tqdm_class())
    return Path(folder), str(info.sha)


def base_model_dir(ctx: StageContext) -> Path:
    """The base model folder recorded by the base stage."""
    return ctx.input("base").path("model_dir")


def load_base(ctx: StageContext, device: str | None = None) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """The base model and tokenizer, in the run's dtype, on ``device`` (default: the run's device)."""
    base = ctx.recipe.base
    folder = base_model_dir(ctx)
    model = load_model(folder, dtype=model_dtype(ctx.recipe), trust_remote_code=base.trust_remote_code,
                       allow_pickle=base.allow_pickle, device=device or default_device(ctx.recipe))
    tok = load_tokenizer(folder, trust_remote_code=base.trust_remote_code)
    return model, tok


# --------------------------------------------------------------------------- device and dtype

# The device of the stage running now, set by the runner (stage_device_scope), so that code given no
# recipe still runs where the recipe said.
_STAGE_DEVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("hubsdd_stage_device", default=None)


def resolve_device(setting: str = "auto") -> str:
    """The torch device a recipe's ``device`` names: ``auto`` is ``cuda`` when torch sees a GPU,
    else ``cpu``. This is the one place hubsdd decides where models run."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise StageError("device: the recipe asks for `cuda`, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})",
                         fix="set `device: auto` or `device: cpu` in the recipe, or install a CUDA build of torch")
    if setting not in ("cpu", "cuda"):
        raise StageError(f"device: unknown device {setting!r}", fix="use auto, cpu or cuda")
    return setting


def default_device(recipe: "Recipe | None" = None) -> str:
    """The device every stage runs on: the recipe's ``device`` resolved (:func:`resolve_device`);
    without a recipe, the device of the stage running now, else ``auto``."""
    if recipe is not None:
        return resolve_device(recipe.device)
    return _STAGE_DEVICE.get() or resolve_device("auto")


def model_dtype(recipe: "Recipe") -> str:
    """The dtype models are loaded in: ``base.dtype`` when the recipe sets it, else bfloat16 on a
    GPU (half the memory of float32, the dtype these models are trained in) and float32 on a CPU
    (whose bfloat16 matmuls are slow on most machines)."""
    if recipe.base.dtype is not None:
        return recipe.base.dtype
    return "bfloat16" if default_device(recipe) == "cuda" else "float32"


@contextlib.contextmanager
def stage_device_scope(recipe: "Recipe") -> Iterator[dict[str, Any]]:
    """While a stage runs: make :func:`default_device` answer the recipe's device, and measure the
    stage's peak GPU memory. Yields a dict that holds, on exit, ``device``, ``dtype`` and (when the
    stage used CUDA in this process) ``peak_gpu_memory_bytes``.

    A stage that needs no GPU (card, merge on the CPU, a cached stage) opens no CUDA context: the
    peak counters are touched only once torch has initialised CUDA. On exit the stage's GPU memory
    is given back (:func:`free_memory`) and the counters reset, so the next stage, vLLM's start-up
    above all (it claims a share of the whole GPU), finds the memory free."""
    device = default_device(recipe)
    usage: dict[str, Any] = {"device": device, "dtype": model_dtype(recipe)}
    token = _STAGE_DEVICE.set(device)
    cuda = None
    if device == "cuda":
        import torch

        cuda = torch.cuda
        if cuda.is_initialized():
            cuda.reset_peak_memory_stats()
    try:
        yield usage
    finally:
        _STAGE_DEVICE.reset(token)
        if cuda is not None and cuda.is_initialized():
            usage["peak_gpu_memory_bytes"] = int(cuda.max_memory_allocated())
        free_memory()
        if cuda is not None and cuda.is_initialized():
            cuda.reset_peak_memory_stats()


def free_memory() -> None:
    """Give back what the models just deleted held: Python's cycles (the Trainer holds some), then
    the CUDA allocator's cache, so the next model (a variant, an evaluated checkpoint, a vLLM
    engine) has room. Opens no CUDA context."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def set_threads() -> None:
    """Use every core we were given, not torch's guess (which oversubscribes containers)."""
    import torch

    n = os.environ.get("HUBSDD_THREADS")
    if n:
        torch.set_num_threads(int(n))


# --------------------------------------------------------------------------- CPU inference speed


_ONEDNN_OK: bool | None = None


def _onednn_linear_works() -> bool:
    """Whether torch's oneDNN linear kernel exists here and agrees with ``F.linear`` (checked once)."""
    global _ONEDNN_OK
    if _ONEDNN_OK is None:
        import torch

        _ONEDNN_OK = False
        if os.environ.get("HUBSDD_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available() \
                and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            try:
                gen = torch.Generator().manual_seed(0)
                x, w, b = (torch.randn(shape, generator=gen) for shape in ((3, 5, 64), (48, 64), (48,)))
                with torch.inference_mode():
                    got = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
                _ONEDNN_OK = bool(torch.allclose(got, torch.nn.functional.linear(x, w, b), rtol=1e-4, atol=1e-4))
            except RuntimeError:
                pass
    return _ONEDNN_OK


@contextlib.contextmanager
def fast_cpu_linears(model: Any) -> Iterator[int]:
    """Run the model's fp32 ``nn.Linear`` layers through oneDNN while inside, on CPU, for inference.

    torch's CPU wheel sends fp32 ``F.linear`` to MKL, which on the AMD EPYC machine this project
    runs on reaches ~215 GFLOPS on 2 cores; oneDNN's kernel reaches ~470 on the same shapes.
    Measured on SmolLM2-135M (``bench/cpu_linear.py``): prefill 1.75x faster, a decode step
    1.45-1.6x faster at batch 1-32. Same fp32 arithmetic in another summation order: outputs agree
    to rounding. Layers are restored on exit; anything that needs gradients falls back to ``F.linear``; a
    machine without oneDNN, or ``HUBSDD_ONEDNN=0``, changes nothing. Yields how many layers run
    through oneDNN."""
    import torch

    patched = []
    if _onednn_linear_works():
        for module in model.modules():
            # Exactly nn.Linear: PEFT/quantized subclasses compute more than x @ W.T + b.
            if (type(module) is torch.nn.Linear and "forward" not in module.__dict__
                    and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32):
                module.forward = functools.partial(_onednn_forward, module)
                patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


def _onednn_forward(module: Any, x: Any) -> Any:
    import torch

    if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
        return torch.nn.functional.linear(x, module.weight, module.bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), module.weight, module.bias, "none", [], "")


@contextlib.contextmanager
def fast_cpu_frozen_linears(model: Any) -> Iterator[int]:
    """Run the *frozen* fp32 ``nn.Linear`` layers of a model being trained through oneDNN, on CPU.

    LoRA trains a few small matrices beside frozen weights; the frozen layers still cost two
    matmuls a step (the forward, and the gradient flowing back to their input), and on CPU those
    two are most of a step. Both are linear maps by the same weight, so both go through oneDNN's
    kernel (:func:`fast_cpu_linears`): the forward with W, the input gradient with a transposed
    copy of W made once. Frozen weights get no gradient, so nothing else is needed. Layers whose
    weight trains keep the default path; restored on exit; ``HUBSDD_ONEDNN=0`` turns it off.
    Yields how many layers were switched."""
    import torch

    patched = []
    if _onednn_linear_works():
        for module in model.modules():
            if (type(module) is torch.nn.Linear and "forward" not in module.__dict__
                    and not module.weight.requires_grad and module.weight.device.type == "cpu"
                    and module.weight.dtype == torch.float32
                    and (module.bias is None or not module.bias.requires_grad)):
                transposed = module.weight.detach().t().contiguous()
                module.forward = functools.partial(_frozen_forward, module, transposed)
                patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


def _frozen_forward(module: Any, transposed: Any, x: Any) -> Any:
    import torch

    if x.dtype != torch.float32 or x.device.type != "cpu":
        return torch.nn.functional.linear(x, module.weight, module.bias)
    return _FrozenLinear.apply(x, module.weight, transposed, module.bias)


def _frozen_linear_function() -> Any:
    import torch

    class FrozenLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, transposed: Any, bias: Any) -> Any:
            ctx.save_for_backward(transposed)
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (transposed,) = ctx.saved_tensors
            # d(x W^T + b)/dx applied to grad is grad @ W, i.e. a linear map by W^T
            grad_x = torch.ops.mkldnn._linear_pointwise(grad.contiguous(), transposed, None, "none", [], "")
            return grad_x, None, None, None

    return FrozenLinear


class _LazyFunction:
    """Defers building the autograd Function until torch is imported by a caller."""

    _fn: Any = None

    def apply(self, *args: Any) -> Any:
        if self._fn is None:
            type(self)._fn = _frozen_linear_function()
        return self._fn.apply(*args)


_FrozenLinear = _LazyFunction()
