"""`rank`: order a job's pictures, best first, by how close CLIP puts each of them to what was asked
for, and report that closeness on each image as `score` (the cosine similarity of the two CLIP
embeddings, -1 … 1; CLIP's own "logits" are this times 100).

What a picture is compared with depends on the op: the prompt (the edited prompt for `reword`, the
instruction for `instruct`); for ops with an input picture and an empty prompt, and for `variation`,
that picture as the model saw it (the selection's crop); for `mix`, the weighted blend of its items'
embeddings. A request with nothing to compare with (txt2img with an empty prompt) is refused before it
is accepted. Prompts are read plain: CLIP has no use for weights, and it reads one window (77 tokens,
the rest cut). The CLIP is the preset's own where its models include one (Kandinsky 2.2's prior,
unCLIP's text encoder with its image-variation encoder), else the preset's `clip` role; presets with
neither do not offer `rank` (sending it is refused like any parameter the preset does not take).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from . import prompts
from .errors import ErrorCode, RequestError

if TYPE_CHECKING:
    from .families.base import Generation
    from .ops.common import Patch
    from .request import OpRequest

#: The text each op's pictures are compared with.
TEXT_FIELDS = {"reword": "new_prompt", "instruct": "instruction"}


@dataclass
class Clip:
    """Two CLIP towers that embed text and pictures into one space (rows normalised to length 1)."""

    text: Callable[[list[str]], torch.Tensor]
    image: Callable[[list[Image.Image]], torch.Tensor]


def _unit(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.float()
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _tokens(tokenizer: Any, texts: list[str], device: Any) -> torch.Tensor:
    ids = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").input_ids
    return ids.to(device)


def _pixels(processor: Any, images: list[Image.Image], model: Any) -> torch.Tensor:
    pixels = processor(images=[i.convert("RGB") for i in images], return_tensors="pt").pixel_values
    return pixels.to(device=model.device, dtype=model.dtype)


def clip_model(parts: dict[str, Any]) -> Clip:
    """A `clip` role: transformers' CLIPModel with its tokenizer and image processor."""
    model, tokenizer, processor = parts["model"], parts["tokenizer"], parts["processor"]

    @torch.no_grad()
    def text(texts: list[str]) -> torch.Tensor:
        pooled = model.text_model(input_ids=_tokens(tokenizer, texts, model.device)).pooler_output
        return _unit(model.text_projection(pooled))

    @torch.no_grad()
    def image(images: list[Image.Image]) -> torch.Tensor:
        pooled = model.vision_model(pixel_values=_pixels(processor, images, model)).pooler_output
        return _unit(model.visual_projection(pooled))

    return Clip(text, image)


def clip_towers(text_encoder: Any, tokenizer: Any, image_encoder: Any, processor: Any) -> Clip:
    """A CLIP that a family's models hold as separate towers with projections (CLIPTextModelWith-
    Projection and CLIPVisionModelWithProjection, trained together)."""

    @torch.no_grad()
    def text(texts: list[str]) -> torch.Tensor:
        return _unit(text_encoder(_tokens(tokenizer, texts, text_encoder.device)).text_embeds)

    @torch.no_grad()
    def image(images: list[Image.Image]) -> torch.Tensor:
        return _unit(image_encoder(_pixels(processor, images, image_encoder)).image_embeds)

    return Clip(text, image)


# -- what the pictures are compared with ---------------------------------------------------------------
def target_doc(op: str) -> str:
    """How `rank`'s doc names what `op`'s pictures are compared with."""
    if op == "variation":
        return "the input picture"
    if op == "mix":
        return "the blend of the items (weighted like the mix)"
    if op in TEXT_FIELDS:
        return f"params.{TEXT_FIELDS[op]}"
    if op == "txt2img":
        return "the prompt"
    return "the prompt (the input picture when the prompt is empty)"


def _text(req: OpRequest) -> str:
    field = TEXT_FIELDS.get(req.op, "prompt")
    text = req.params.get(field)
    if req.op == "reword" and text is None:
        text = req.params.get("prompt")
    return prompts.plain(text or "").strip()


def check(req: OpRequest) -> None:
    """`rank` needs something to compare the pictures with."""
    if not req.params.get("rank") or req.op in ("variation", "mix") or _text(req):
        return
    if "image" in req.images and req.op != "reword":
        return
    field = TEXT_FIELDS.get(req.op, "prompt")
    raise RequestError(
        ErrorCode.INVALID_VALUE,
        f"params.rank: ranking compares each picture with params.{field}, which is empty",
        "params.rank",
    )


def _input_picture(req: OpRequest) -> Image.Image:
    """The input picture as the op's model saw it: the selection's crop where the op has one."""
    from .ops.common import workspace

    if "padding" in req.params:
        return workspace(req).image
    return req.images["image"].convert("RGB")


def goal(req: OpRequest, clip: Clip) -> torch.Tensor:
    """The (1, dim) embedding the pictures are compared with."""
    if req.op == "mix":
        return _blend(req, clip)
    text = _text(req)
    if req.op == "variation" or not text:
        return clip.image([_input_picture(req)])
    return clip.text([text])


def _blend(req: OpRequest, clip: Clip) -> torch.Tensor:
    rows, weights = [], []
    for item in req.params["items"]:
        if item["weight"] <= 0:
            continue
        if item["prompt"] is not None:
            rows.append(clip.text([prompts.plain(item["prompt"])]))
        else:
            rows.append(clip.image([req.images[item["image"]]]))
        weights.append(item["weight"])
    mixed = sum(w * r for w, r in zip(weights, rows, strict=True)) / sum(weights)
    return _unit(mixed)


def rank(gen: Generation, clip: Clip, patches: list[Patch]) -> list[Patch]:
    """`patches` best first, each labelled with its `score`."""
    target = goal(gen.req, clip)
    pictures = clip.image([patch.image for patch in patches])
    scores = (pictures @ target.to(pictures).T)[:, 0].tolist()
    for patch, score in zip(patches, scores, strict=True):
        patch.labels["score"] = float(score)
    return sorted(patches, key=lambda patch: -patch.labels["score"])
