"""ControlNet preprocessors from controlnet-aux.

`canny`, `shuffle` and `lineart_standard` need no weights. The others load `lllyasviel/Annotators`
weights from the Hugging Face cache; offline without them they are listed as unavailable and a job
that asks for one fails with `model_unavailable` naming the missing file.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .errors import ErrorCode, RequestError

ANNOTATORS = "lllyasviel/Annotators"


@dataclass(frozen=True)
class Preprocessor:
    name: str
    class_path: str  # "module:Class" inside controlnet_aux
    weights: str | None  # file in lllyasviel/Annotators, None = needs no weights


PREPROCESSORS: dict[str, Preprocessor | None] = {
    "none": None,
    "canny": Preprocessor("canny", "controlnet_aux.canny:CannyDetector", None),
    "shuffle": Preprocessor("shuffle", "controlnet_aux.shuffle:ContentShuffleDetector", None),
    "lineart_standard": Preprocessor(
        "lineart_standard", "controlnet_aux.lineart_standard:LineartStandardDetector", None
    ),
    "lineart": Preprocessor("lineart", "controlnet_aux.lineart:LineartDetector", "sk_model.pth"),
    "hed": Preprocessor("hed", "controlnet_aux.hed:HEDdetector", "ControlNetHED.pth"),
    "pidi": Preprocessor("pidi", "controlnet_aux.pidi:PidiNetDetector", "table5_pidinet.pth"),
    "mlsd": Preprocessor("mlsd", "controlnet_aux.mlsd:MLSDdetector", "mlsd_large_512_fp32.pth"),
    "depth_midas": Preprocessor(
        "depth_midas", "controlnet_aux.midas:MidasDetector", "dpt_hybrid-midas-501f0c75.pt"
    ),
    "normalbae": Preprocessor("normalbae", "controlnet_aux.normalbae:NormalBaeDetector", "scannet.pt"),
    "openpose": Preprocessor("openpose", "controlnet_aux.open_pose:OpenposeDetector", "body_pose_model.pth"),
}


def _weights_cached(filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ANNOTATORS, filename)
    return isinstance(found, str)


def describe() -> list[dict[str, Any]]:
    """The handshake's `preprocessors` array."""
    return [
        {"name": name, "available": spec is None or spec.weights is None or _weights_cached(spec.weights)}
        for name, spec in PREPROCESSORS.items()
    ]


class Preprocessors:
    """Loads each detector once and applies it at an exact output size."""

    def __init__(self) -> None:
        self._loaded: dict[str, Callable[..., Any]] = {}

    def _detector(self, spec: Preprocessor) -> Callable[..., Any]:
        if spec.name not in self._loaded:
            module, cls_name = spec.class_path.split(":")
            cls = getattr(importlib.import_module(module), cls_name)
            try:
                self._loaded[spec.name] = cls.from_pretrained(ANNOTATORS) if spec.weights else cls()
            except Exception as exc:
                raise RequestError(
                    ErrorCode.MODEL_UNAVAILABLE,
                    f"preprocessor {spec.name!r} needs {spec.weights} from {ANNOTATORS}, which could "
                    f"not be loaded ({type(exc).__name__}: {exc})",
                ) from exc
        return self._loaded[spec.name]

    def apply(self, name: str, image: Image.Image, seed: int) -> Image.Image:
        """Run preprocessor `name` on `image`; the control map has exactly `image`'s size."""
        spec = PREPROCESSORS[name]
        if spec is None:
            return image.convert("RGB")
        detector = self._detector(spec)
        np.random.seed(seed % 2**32)  # shuffle draws from numpy's global generator
        side = max(image.size)
        sizes = {"detect_resolution": side}
        if "image_resolution" in inspect.signature(detector.__call__).parameters:
            sizes["image_resolution"] = side
        out = detector(image.convert("RGB"), output_type="pil", **sizes)
        return out.convert("RGB").resize(image.size, Image.BILINEAR)
