"""Pick the compute device and dtype: CUDA, then Apple MPS, then CPU; half precision on GPUs."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    if requested != "auto":
        return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[requested]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the device's out-of-memory errors (CUDA's own type, or MPS's RuntimeError text)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
