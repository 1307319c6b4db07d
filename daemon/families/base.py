"""What a model family is to Underpaint: how its components load, which ops it offers, and how each
op drives its diffusers pipelines.

The ops (`underpaint.daemon.ops`) do not care which family runs them: they validate, crop to the
selection, call one method of the preset's family with a `Generation`, and paste the pictures back.
A family module (one per family, as diffusers keeps one folder per pipeline family) fills in those
methods with its pipelines. Adding a family newer than the tour (SD3, Flux, ...) is one more module
and one line in `families/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image

from ..config import Preset
from ..errors import ErrorCode, RequestError
from ..params import OpSpec, loras_param, rank_param
from ..progress import StepReporter
from ..request import OpRequest, generators, seeds_for
from ..schedulers import fresh_scheduler

if TYPE_CHECKING:
    from ..p2p import Edit, Pair
    from ..preprocessors import Preprocessors
    from ..ranking import Clip
    from ..serving.models import ModelManager

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


# -- loading ------------------------------------------------------------------------------------------
def is_single_file(source: str) -> bool:
    return source.lower().endswith(SINGLE_FILE_SUFFIXES)


def check_pickle(preset: Preset, source: str) -> None:
    """Pickled checkpoints can run code when loaded: only with the user's explicit word for it."""
    if source.lower().endswith(PICKLE_SUFFIXES) and not preset.trust_pickle:
        raise RequestError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"model {preset.name!r}: {source!r} is a pickled checkpoint, which can run code when "
            "loaded; convert it to .safetensors, or set `trust_pickle = true` in this preset if you "
            "trust where the file came from",
            "model",
        )


def pretrained_kwargs(preset: Preset, dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments of every `from_pretrained` call for this preset."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    if preset.variant:
        kwargs["variant"] = preset.variant
    return kwargs


def single_file_kwargs(preset: Preset, dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments of every `from_single_file` call: the configs folder makes it work offline."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    if preset.single_file_config:
        kwargs["config"] = preset.single_file_config
    return kwargs


def load_pipeline(cls: Any, preset: Preset, source: str, dtype: torch.dtype, **kwargs: Any) -> Any:
    """A whole pipeline from a folder, a hub id or (where the class can) a single file."""
    if is_single_file(source):
        check_pickle(preset, source)
        if not hasattr(cls, "from_single_file"):
            raise RequestError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"model {preset.name!r}: {cls.__name__} loads from diffusers folders or hub ids only, "
                f"not from the single file {source!r}",
                "model",
            )
        pipe = cls.from_single_file(source, **single_file_kwargs(preset, dtype), **kwargs)
    else:
        pipe = cls.from_pretrained(source, **pretrained_kwargs(preset, dtype), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_model(
    cls: Any,
    preset: Preset,
    source: str,
    dtype: torch.dtype,
    subfolder: str | None = None,
    single_file_pipeline: Any = None,
) -> Any:
    """One model (a UNet, a ControlNet...) of a folder; from a single file through the pipeline class
    that knows its layout (`single_file_pipeline`), keeping only the `subfolder` part (a UNet comes
    straight from the file when the preset names a configs folder)."""
    if is_single_file(source):
        check_pickle(preset, source)
        if single_file_pipeline is None:
            kwargs = single_file_kwargs(preset, dtype)
            config = kwargs.get("config")
            if config and Path(config).is_dir() and not (Path(config) / "config.json").is_file():
                del kwargs["config"]  # a pipeline's configs describe no ControlNet: diffusers picks its own
            return cls.from_single_file(source, **kwargs)
        if preset.single_file_config and (subfolder or "unet") == "unet":
            return _unet_from_single_file(cls, preset, source, dtype)
        pipe = single_file_pipeline.from_single_file(source, **single_file_kwargs(preset, dtype))
        return getattr(pipe, subfolder or "unet")
    extra = {"subfolder": subfolder} if subfolder else {}
    return cls.from_pretrained(source, **pretrained_kwargs(preset, dtype), **extra)


def _unet_from_single_file(cls: Any, preset: Preset, source: str, dtype: torch.dtype) -> Any:
    """The UNet of an original-layout file, configured by the preset's configs folder. That folder
    describes the base model, so an inpainting (9-channel) or InstructPix2Pix (8-channel) file takes
    its input channels from its own first convolution; its VAE and text encoder are not built."""
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    checkpoint = load_single_file_checkpoint(source)
    conv_in = checkpoint.get("model.diffusion_model.input_blocks.0.0.weight")
    channels = {"in_channels": conv_in.shape[1]} if conv_in is not None else {}
    return cls.from_single_file(checkpoint, subfolder="unet", **single_file_kwargs(preset, dtype), **channels)


def load_clip(preset: Preset, source: str, dtype: torch.dtype) -> dict[str, Any]:
    """A `clip` role: a CLIP model with both towers (e.g. openai/clip-vit-large-patch14), its tokenizer
    and image processor, all from one folder or hub id. It ranks pictures (`rank`); the preset's
    `variant` names its diffusion weights' files, not this model's."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    if is_single_file(source):
        raise RequestError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"model {preset.name!r}: the clip role loads from a folder or hub id (model, tokenizer and "
            f"image processor together), not from the single file {source!r}",
            "model",
        )
    return {
        "model": CLIPModel.from_pretrained(source, dtype=dtype).eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(source),
        "processor": CLIPImageProcessor.from_pretrained(source),
    }


CLIP_ROLE = "a CLIP model (both towers, e.g. openai/clip-vit-large-patch14) that ranks pictures (`rank`)"


# -- one job's run --------------------------------------------------------------------------------------
@dataclass
class Generation:
    """What a family method gets for one job: the request, the warm models, progress, and seeds."""

    req: OpRequest
    models: ModelManager
    steps: StepReporter
    preprocessors: Preprocessors | None = None
    seeds: list[int] = field(init=False)
    extra: dict[str, Any] = field(default_factory=dict)  # fields the op adds to the `result` event
    memo: dict[str, Any] = field(
        default_factory=dict
    )  # what every picture of the job reuses (text embeddings)

    def __post_init__(self) -> None:
        self.seeds = seeds_for(self.req.params)

    def for_seed(self, seed: int) -> Generation:
        """The same job for one picture only (see ops.run_op): shares models, progress, `extra` and
        `memo`."""
        one = replace(self)
        one.seeds, one.extra, one.memo = [seed], self.extra, self.memo
        return one

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time one of the job's pictures asks for `key`, then the same value:
        work that does not depend on the seed (encoding the prompt) runs once per job."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @property
    def params(self) -> dict[str, Any]:
        return self.req.params

    @property
    def preset(self) -> Preset:
        return self.req.preset

    def view(self, kind: str, extras: Sequence[str] = ()) -> Any:
        """A pipeline of `kind` over the preset's shared, warm components."""
        return self.models.view(self.preset, kind, extras, self.params.get("loras") or ())

    def generators(self) -> list[torch.Generator]:
        return generators(self.seeds)

    def schedule(self, pipe: Any, attr: str = "scheduler", named: bool = True, space: str = "sd") -> Any:
        """Give `pipe` this job's own fresh scheduler (in `attr`), watched for progress, previews and
        cancel. It starts from the model's own scheduler, never from what an earlier job chose; with
        `named`, the job's `scheduler` parameter replaces it. Returns `pipe`."""
        default = _default_scheduler(pipe, attr)
        name = self.params.get("scheduler", "") if named else ""
        setattr(pipe, attr, self.steps.watch(fresh_scheduler(name, default), pipe, space))
        return pipe

    def sd_text(self, prompt: str | None = None) -> dict[str, Any]:
        """The arguments Stable-Diffusion-style pipelines share."""
        params = self.params
        return {
            "prompt": params.get("prompt", "") if prompt is None else prompt,
            "negative_prompt": params.get("negative_prompt") or None,
            "num_inference_steps": params["steps"],
            "guidance_scale": params["guidance_scale"],
            "num_images_per_prompt": len(self.seeds),
            "generator": self.generators(),
            "output_type": "pil",
        }


def _default_scheduler(pipe: Any, attr: str) -> Any:
    """The scheduler the view was built with, remembered the first time a job replaces it."""
    key = f"_underpaint_default_{attr}"
    if key not in pipe.__dict__:
        pipe.__dict__[key] = getattr(pipe, attr)
    return pipe.__dict__[key]


# -- the family interface --------------------------------------------------------------------------------
class Family:
    """One model family. Subclasses set the class attributes and implement the ops they offer."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # e.g. "Stable Diffusion 1.x"
    about: ClassVar[str] = ""  # how it works, what it is good and bad at: what a painter needs to choose
    roles: ClassVar[dict[str, str]] = {}  # preset key -> what it holds
    required_roles: ClassVar[tuple[str, ...]] = ("base",)
    default_resolution: ClassVar[int] = 512
    preview_space: ClassVar[str] = "sd"  # see progress.preview_image
    # tiny-<family> presets: role -> folder of builders.tiny.<family>, ControlNet kind -> folder
    tiny_sources: ClassVar[dict[str, str]] = {}
    tiny_controlnets: ClassVar[dict[str, str]] = {}
    tiny_resolution: ClassVar[int] = 64
    # LoRAs: the roles whose modules take the adapters (none: the family takes no LoRAs), and the ops
    # that offer `loras` (those whose views run on those roles)
    lora_roles: ClassVar[tuple[str, ...]] = ()
    lora_ops: ClassVar[tuple[str, ...]] = ()

    # -- what the preset offers -------------------------------------------------------------------
    def ops(self, preset: Preset) -> list[str]:
        """The ops this preset can run, in the order editors should offer them."""
        raise NotImplementedError

    def op_spec(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        """The exact spec of `op` for this preset: the common spec, with this family's own parameters
        added and the ones it cannot take removed."""
        return spec

    def with_loras(self, op: str, spec: OpSpec) -> OpSpec:
        """`spec` with the `loras` parameter where this family's op can take LoRAs."""
        return spec.changed(add=[loras_param()]) if op in self.lora_ops else spec

    def check(self, req: OpRequest) -> None:
        """Family-specific validation of a request, run before the job is accepted (after the op's
        own checks): raise RequestError for what this family's pipelines cannot take."""

    def describe(self, preset: Preset) -> dict[str, Any]:
        """Extra fields of the preset's `models` entry."""
        return {}

    # -- components and views ---------------------------------------------------------------------
    def load(self, models: ModelManager, preset: Preset, role: str, source: str) -> Any:
        """Load one role's component (on the worker thread); `models.dtype` is the weights' dtype."""
        raise NotImplementedError

    def cache_key(self, preset: Preset, role: str, source: str) -> str:
        """What identifies the loaded component of `role` besides its family and role kind: its
        source, plus any setting that changes what `load` makes of it (presets naming the same source
        with the same settings share one copy)."""
        return source

    def needs(self, preset: Preset, kind: str, extras: Sequence[str]) -> list[str]:
        """The roles a view of `kind` is built from."""
        raise NotImplementedError

    def build_view(self, preset: Preset, kind: str, parts: dict[str, Any], extras: Sequence[str]) -> Any:
        """A pipeline of `kind` assembled from loaded components (`parts`: role -> object)."""
        raise NotImplementedError

    def estimate_steps(self, op: str, params: dict[str, Any]) -> int:
        """Progress-reporting steps one picture of `op` takes, all its denoising loops together: the
        progress total of work not started yet (families with a prior or stages add theirs)."""
        return max(1, int(params.get("steps", 1) * (params.get("strength") or 1.0)))

    def warm(self, preset: Preset, op: str) -> list[tuple[str, tuple[str, ...]]]:
        """The views `load` builds for `op`: (kind, extras) pairs."""
        return [("txt2img", ())]

    # -- ops: each returns one picture per seed, at the working size ------------------------------
    def txt2img(self, gen: Generation, width: int, height: int) -> list[Image.Image]:
        raise self._unsupported(gen, "txt2img")

    def img2img(self, gen: Generation, image: Image.Image, strength: float) -> list[Image.Image]:
        raise self._unsupported(gen, "sdedit")

    def inpaint(
        self, gen: Generation, image: Image.Image, mask: Image.Image, strength: float
    ) -> list[Image.Image]:
        raise self._unsupported(gen, "inpaint")

    def controlnet(
        self,
        gen: Generation,
        units: list[dict[str, Any]],
        maps: list[Image.Image],
        size: tuple[int, int],
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> list[Image.Image]:
        """`maps`: one control map per unit, at `size` (the working size); with `image` (and `mask`):
        ControlNet img2img (inpainting) at `params.strength`."""
        raise self._unsupported(gen, "controlnet")

    def instruct(self, gen: Generation, image: Image.Image) -> list[Image.Image]:
        raise self._unsupported(gen, "instruct")

    def upscale(self, gen: Generation, image: Image.Image, factor: int) -> list[Image.Image]:
        """Pictures of any size near `factor` x the input (the op scales them to exactly that)."""
        raise self._unsupported(gen, "upscale")

    def variation(self, gen: Generation, image: Image.Image) -> list[Image.Image]:
        raise self._unsupported(gen, "variation")

    def depth(
        self, gen: Generation, image: Image.Image, depth: Image.Image | None, strength: float
    ) -> list[Image.Image]:
        raise self._unsupported(gen, "depth")

    def mix(
        self, gen: Generation, items: list[tuple[str | Image.Image, float]], size: tuple[int, int]
    ) -> list[Image.Image]:
        """`items`: (prompt or picture, weight) pairs to blend."""
        raise self._unsupported(gen, "mix")

    def reword(
        self,
        gen: Generation,
        edit: Edit,
        size: tuple[int, int],
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        strength: float = 1.0,
    ) -> list[Pair]:
        """Prompt-to-Prompt (see p2p.py): the source job (txt2img at `size`, or inpaint of `image` under
        `mask` at `strength`) and its edit, one Pair per seed. Families with a cross-attention UNet
        offer it."""
        raise self._unsupported(gen, "reword")

    # -- ranking ----------------------------------------------------------------------------------
    def ranks(self, preset: Preset) -> bool:
        """Whether the preset has a CLIP (text and image towers) to rank pictures with: its `clip`
        role by default; families whose own models include a CLIP say so."""
        return "clip" in preset.sources

    def clip(self, gen: Generation) -> Clip:
        """The CLIP that ranks this preset's pictures (the `clip` role's model by default)."""
        from ..ranking import clip_model

        return clip_model(gen.models.component(gen.preset, "clip"))

    def ranked(self, op: str, spec: OpSpec, preset: Preset) -> OpSpec:
        """`spec` with `rank` where the op makes variations and the preset can rank them."""
        from ..ranking import target_doc

        if "variations" not in spec.params or not self.ranks(preset):
            return spec
        return spec.changed(add=[rank_param(target_doc(op))])

    def _unsupported(self, gen: Generation, op: str) -> RequestError:
        return RequestError(
            ErrorCode.UNSUPPORTED_OP, f"model {gen.preset.name!r} ({self.name}) cannot run {op}", "op"
        )
