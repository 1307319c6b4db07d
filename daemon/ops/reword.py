"""reword: a painter liked a generated picture but wants other words in its prompt. The source job
(txt2img, or inpaint: the ops that start from noise in the masked area) runs again with its preset,
params, seed and images, side by side with the edited prompt, and Prompt-to-Prompt (p2p.py) keeps the
source's composition in the edited picture. Each result is an RGBA patch at the source result's place,
to stack over it; with a local blend its alpha covers only the region the blend words mark (and its
pixels elsewhere are the source's).
"""

from __future__ import annotations

from PIL import Image, ImageChops

from .. import p2p, prompts
from ..families.base import Generation
from ..images import Region, feathered_alpha, to_patch
from ..params import Limits
from ..prompts import Reader
from ..request import OpRequest
from .common import Patch, check_mask, check_strength, family_of, full_size, require_image, workspace


def check(req: OpRequest, limits: Limits) -> None:
    """Resolve the defaults the source job implies (its op from the images sent, the edited prompt,
    the edit kind) into the params, so the result says exactly what ran; refuse an edit the prompts do
    not allow before the job is accepted."""
    params = req.params
    if params["op"] is None:
        params["op"] = "inpaint" if "mask" in req.images else "txt2img"
    if params["op"] == "inpaint":
        require_image(req, "image")
        require_image(req, "mask")
        check_mask(req)
        check_strength(req)
    if params["new_prompt"] is None:
        params["new_prompt"] = params["prompt"]
    tokenizer = prompts.validation_tokenizer(req.preset, Reader("base"))
    if tokenizer is not None:  # else the job resolves it when it runs
        params["edit"] = p2p.plan(tokenizer, p2p.Edit.from_params(params)).kind


def run(gen: Generation) -> list[Patch]:
    params = gen.params
    edit = p2p.Edit.from_params(params)
    fam = family_of(gen)
    if params["op"] == "inpaint":
        ws = workspace(gen.req)
        pairs = fam.reword(gen, edit, ws.image.size, ws.image, ws.work_mask, params["strength"])
        region, mask = ws.region, ws.mask
    else:
        width, height = full_size(gen.req)
        pairs = fam.reword(gen, edit, (width, height))
        region, mask = Region(0, 0, width, height, width, height), None
    return [
        _patch(pair, region, mask, params["feather"], seed)
        for pair, seed in zip(pairs, gen.seeds, strict=True)
    ]


def _patch(pair: p2p.Pair, region: Region, mask: Image.Image | None, feather: int, seed: int) -> Patch:
    """The edited picture as a patch of the source's region. With a local blend, the pixels outside
    the blend region are the source's and transparent (the alpha feathers inwards only)."""
    if pair.region is None or pair.source is None:
        return Patch(to_patch(pair.edited, region, mask, feather), region.x, region.y, seed)
    rgb = Image.composite(pair.edited.convert("RGB"), pair.source.convert("RGB"), pair.region)
    patch = to_patch(rgb, region, mask, feather)
    blend = feathered_alpha(pair.region.resize((region.width, region.height), Image.NEAREST), feather)
    patch.putalpha(ImageChops.darker(patch.getchannel("A"), blend))
    return Patch(patch, region.x, region.y, seed)
