"""Pick the compute device and dtype (CUDA, then Apple MPS, then CPU; half precision on GPUs), and the
devices of a local pool of workers (one worker per device)."""

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


def all_devices() -> list[str]:
    """One entry per device a worker can own: every CUDA GPU, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(pick_device("auto"))]


def expand_devices(text: str) -> list[str]:
    """The device of every local worker: `auto` (every device of `all_devices`) or a comma-separated
    list (`cuda:0,cuda:1`, `cpu,cpu`). ValueError for a device torch does not know."""
    text = text.strip()
    devices = all_devices() if text == "auto" else [part.strip() for part in text.split(",") if part.strip()]
    if not devices:
        raise ValueError(f"no device in {text!r}")
    for device in devices:
        try:
            torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device {device!r}: {exc}") from None
    return devices
