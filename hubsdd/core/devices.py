"""Facts about this machine's accelerators, below everything that asks (preflight, the generation
backends, the trainer): which GPUs this process may use, and how much memory is in use on one.

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


def device_memory_used() -> int | None:
    """Bytes in use on GPU 0 by every process (vLLM's engines are other processes, which
    ``torch.cuda.max_memory_allocated`` does not see): NVML when installed, else torch's
    ``mem_get_info`` if this process already has a CUDA context; None otherwise. Opens no context."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 -- no NVML library or no driver: fall back
        pass
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        free, total = torch.cuda.mem_get_info()
        return int(total - free)
    return None
