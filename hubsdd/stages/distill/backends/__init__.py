"""Generation engines for the teacher: what the distill stage needs from one, and which one it gets.

``transformers`` (:mod:`.transformers`): continuous batching with a transformers model on this
machine, CPU or GPU. ``vllm`` (:mod:`.vllm`): vLLM engines on GPUs, an optional extra. A new engine
implements :class:`GenerationBackend` and is chosen in :func:`make_backend`.
"""

from __future__ import annotations

from typing import Sequence

from ....core.chat import Messages
from ....core.recipe import GenerationSettings
from ....core.stage_io import StageContext
from .engine import END_OF_TURN_TOKENS, Generation, GenerationBackend, stop_token_ids  # noqa: F401  (the package's API)


def make_backend(ctx: StageContext, settings: GenerationSettings,
                 conversations: Sequence[Messages] = ()) -> GenerationBackend:
    """The teacher behind the backend the recipe chose: the base model, unpruned.

    ``conversations``: every prompt the stage will ask for; an engine that must size its context
    up front (vLLM) sizes it for the longest."""
    from ....core.models import base_model_dir, default_device, load_base, model_dtype, set_threads

    if settings.backend == "vllm":
        from .vllm import VLLMBackend

        base = ctx.recipe.base
        # The run's dtype (base.dtype, else bfloat16 on a GPU): never None, which vLLM would take
        # as its own `auto` (float16 for a float32 checkpoint).
        return VLLMBackend(base_model_dir(ctx), settings, dtype=model_dtype(ctx.recipe),
                           trust_remote_code=base.trust_remote_code, sized_for=conversations)
    from .transformers import TransformersBackend

    set_threads()
    model, tok = load_base(ctx, device=default_device(ctx.recipe))
    return TransformersBackend(model, tok, settings)
