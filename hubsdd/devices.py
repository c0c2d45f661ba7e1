"""Facts about this machine's accelerators, below everything that asks (preflight, the generation
backends, the trainer): which GPUs this process may use.

Torch is imported only when a fact needs it, so ``hubsdd validate`` stays quick.
"""

from __future__ import annotations

import os


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every device torch counts."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]
