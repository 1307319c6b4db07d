"""Load model presets on first use, keep them warm, share components between ops, and unload the
least recently used ones under a memory budget.

Unit of caching is a *component* of a preset: `base` (a StableDiffusionPipeline: UNet, VAE, text
encoder, tokenizer, scheduler), `inpaint` / `instruct` (only their UNets: the VAE and text encoder of
SD inpainting and InstructPix2Pix checkpoints are the base ones), `controlnet:<name>`, `upscale_x4`,
`upscale_x2` (whole pipelines of their own). Per-op pipelines are thin views built from those
components with the diffusers pipeline constructors, so switching ops never loads a second copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from diffusers.models import MultiControlNetModel

from ..config import FULLSIZE_PREFIX, TINY_PREFIX, Config, Preset, data_home
from ..errors import ErrorCode, RequestError

log = logging.getLogger("underpaint.models")

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

# Which components each pipeline kind needs (besides base, which every SD-1.x view needs).
_VIEW_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "txt2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
    "instruct": StableDiffusionInstructPix2PixPipeline,
    "controlnet": StableDiffusionControlNetPipeline,
    "controlnet_img2img": StableDiffusionControlNetImg2ImgPipeline,
    "controlnet_inpaint": StableDiffusionControlNetInpaintPipeline,
}


@dataclass
class Component:
    obj: Any
    nbytes: int
    load_seconds: float
    last_used: float


def module_bytes(*modules: Any) -> int:
    """Bytes of parameters and buffers of torch modules (each module counted once)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        if not isinstance(module, torch.nn.Module) or id(module) in seen:
            continue
        seen.add(id(module))
        for t in list(module.parameters()) + list(module.buffers()):
            total += t.numel() * t.element_size()
    return total


def pipeline_bytes(pipe: DiffusionPipeline) -> int:
    return module_bytes(*pipe.components.values())


class ModelManager:
    """Owns every loaded model. Loading runs on the worker thread; `describe` may run anywhere."""

    def __init__(
        self,
        config: Config,
        device: torch.device,
        dtype: torch.dtype,
        budget_bytes: int = 0,
        tiny_root: Path | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.budget_bytes = budget_bytes
        self.tiny_root = tiny_root or data_home() / "models"
        self._components: OrderedDict[tuple[str, str], Component] = OrderedDict()
        self._views: dict[tuple, DiffusionPipeline] = {}
        self._lock = threading.Lock()
        self.load_seconds = 0.0  # running total, so a job can report its own share

    # -- lookup ------------------------------------------------------------------------------
    def preset(self, name: str | None) -> Preset:
        name = name or self.config.default
        try:
            return self.config.presets[name]
        except KeyError:
            raise RequestError(
                ErrorCode.UNKNOWN_MODEL,
                f"model {name!r} is not a preset; known: {sorted(self.config.presets)}",
                "model",
            ) from None

    def describe(self) -> list[dict[str, Any]]:
        """The presets as the protocol's `models.presets` array."""
        with self._lock:
            loaded = list(self._components)
        return [
            {
                "name": p.name,
                "family": p.family,
                "resolution": p.resolution,
                "ops": p.ops(),
                "controlnets": sorted(p.controlnets),
                "loaded": [role for (pname, role) in loaded if pname == p.name],
            }
            for p in self.config.presets.values()
        ]

    def used_bytes(self) -> int:
        with self._lock:
            return sum(c.nbytes for c in self._components.values())

    # -- pipelines for ops ---------------------------------------------------------------------
    def view(self, preset: Preset, kind: str, controlnets: Sequence[str] = ()) -> DiffusionPipeline:
        """A pipeline of `kind` built over the preset's shared, already-loaded components."""
        if kind in ("upscale_x4", "upscale_x2"):
            pipe = self._component(preset, kind)
            self._evict(keep={(preset.name, kind)})
            return pipe
        key = (preset.name, kind, tuple(controlnets))
        needed = self._needed(preset, kind, controlnets)
        for role in needed:
            self._component(preset, role)
        self._evict(keep={(preset.name, role) for role in needed})
        view = self._views.get(key)
        if view is None:
            view = self._build_view(preset, kind, controlnets)
            self._views[key] = view
        return view

    def _needed(self, preset: Preset, kind: str, controlnets: Sequence[str]) -> list[str]:
        roles = ["base"]
        if kind in ("inpaint", "controlnet_inpaint") and "inpaint" in preset.sources:
            roles.append("inpaint")
        if kind == "instruct":
            roles.append("instruct")
        roles += [f"controlnet:{name}" for name in controlnets]
        return roles

    def _build_view(self, preset: Preset, kind: str, controlnets: Sequence[str]) -> DiffusionPipeline:
        base: StableDiffusionPipeline = self._components[(preset.name, "base")].obj
        parts: dict[str, Any] = {
            "vae": base.vae,
            "text_encoder": base.text_encoder,
            "tokenizer": base.tokenizer,
            "unet": base.unet,
            "scheduler": base.scheduler,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
        if kind in ("inpaint", "controlnet_inpaint") and "inpaint" in preset.sources:
            parts["unet"] = self._components[(preset.name, "inpaint")].obj
        if kind == "instruct":
            parts["unet"] = self._components[(preset.name, "instruct")].obj
        if kind.startswith("controlnet"):
            nets = [self._components[(preset.name, f"controlnet:{n}")].obj for n in controlnets]
            parts["controlnet"] = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
        pipe = _VIEW_CLASSES[kind](**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # -- components ------------------------------------------------------------------------------
    def _component(self, preset: Preset, role: str) -> Any:
        key = (preset.name, role)
        with self._lock:
            comp = self._components.get(key)
            if comp is not None:
                comp.last_used = time.monotonic()
                self._components.move_to_end(key)
                return comp.obj
        t0 = time.perf_counter()
        obj = self._load(preset, role)
        seconds = time.perf_counter() - t0
        self.load_seconds += seconds
        nbytes = pipeline_bytes(obj) if isinstance(obj, DiffusionPipeline) else module_bytes(obj)
        log.info("loaded %s/%s in %.2f s (%.1f MB)", preset.name, role, seconds, nbytes / 1e6)
        with self._lock:
            self._components[key] = Component(obj, nbytes, seconds, time.monotonic())
        return obj

    def _evict(self, keep: set[tuple[str, str]]) -> None:
        """Unload least recently used components until the budget holds (never those in `keep`)."""
        if not self.budget_bytes:
            return
        while self.used_bytes() > self.budget_bytes:
            with self._lock:
                victim = next((k for k in self._components if k not in keep), None)
            if victim is None:
                log.warning("memory budget exceeded by the current job's own models alone")
                return
            self._drop(victim)

    def _drop(self, key: tuple[str, str]) -> int:
        """Forget a component (and the views built on its preset); returns its bytes."""
        with self._lock:
            comp = self._components.pop(key, None)
            for view_key in [k for k in self._views if k[0] == key[0]]:
                del self._views[view_key]
        if comp is None:
            return 0
        log.info("unloaded %s/%s (%.1f MB)", key[0], key[1], comp.nbytes / 1e6)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return comp.nbytes

    def unload(self, preset_name: str) -> int:
        """Unload every component of a preset; returns the bytes freed."""
        self.preset(preset_name)
        with self._lock:
            keys = [k for k in self._components if k[0] == preset_name]
        return sum(self._drop(key) for key in keys)

    def unload_others(self, preset_name: str) -> None:
        """Free every other preset's components (used to retry after running out of memory)."""
        with self._lock:
            keys = [k for k in self._components if k[0] != preset_name]
        for key in keys:
            self._drop(key)

    # -- loading ---------------------------------------------------------------------------------
    def _source(self, preset: Preset, role: str) -> str:
        if role.startswith("controlnet:"):
            name = role.split(":", 1)[1]
            source = preset.controlnets[name]
        else:
            source = preset.sources[role]
        if source.startswith(TINY_PREFIX):
            from ..builders.tiny.sd15 import ensure_tiny_models

            return str(ensure_tiny_models(self.tiny_root) / source[len(TINY_PREFIX) :])
        if source.startswith(FULLSIZE_PREFIX):
            from ..builders.fullsize import ensure_fullsize_models

            return str(ensure_fullsize_models(self.tiny_root) / source[len(FULLSIZE_PREFIX) :])
        return source

    def _load(self, preset: Preset, role: str) -> Any:
        source = self._source(preset, role)
        try:
            obj = self._from_source(preset, role, source)
        except RequestError:
            raise
        except Exception as exc:  # missing files, offline hub, bad checkpoint...
            raise RequestError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"could not load {role} of model {preset.name!r} from {source!r}: "
                f"{type(exc).__name__}: {exc}",
                "model",
            ) from exc
        return obj.to(self.device)

    def _from_source(self, preset: Preset, role: str, source: str) -> Any:
        single = source.lower().endswith(SINGLE_FILE_SUFFIXES)
        common: dict[str, Any] = {"dtype": self.dtype}
        if single and preset.single_file_config:
            common["config"] = preset.single_file_config
        if role.startswith("controlnet:"):
            if single:
                return ControlNetModel.from_single_file(source, **common)
            return ControlNetModel.from_pretrained(source, **common)
        if role in ("inpaint", "instruct"):
            if single:
                cls = StableDiffusionInpaintPipeline if role == "inpaint" else StableDiffusionPipeline
                return cls.from_single_file(source, **common).unet
            return UNet2DConditionModel.from_pretrained(source, subfolder="unet", **common)
        cls = {
            "base": StableDiffusionPipeline,
            "upscale_x4": StableDiffusionUpscalePipeline,
            "upscale_x2": StableDiffusionLatentUpscalePipeline,
        }[role]
        extra = {"safety_checker": None, "requires_safety_checker": False} if role == "base" else {}
        if single:
            pipe = cls.from_single_file(source, **common, **extra)
        else:
            pipe = cls.from_pretrained(source, **common, **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def component_objects(self, preset_name: str) -> dict[str, Any]:
        """Loaded components of a preset by role (for inspection, tests and benchmarks)."""
        with self._lock:
            return {role: c.obj for (p, role), c in self._components.items() if p == preset_name}
