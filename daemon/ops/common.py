"""What every op shares: the patches it returns, the selection-aware workspace, and the checks that
need the decoded images (run before a job is accepted)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import ErrorCode, RequestError
from ..images import Region, crop_to_work, find_region, to_mask, to_patch
from ..request import OpRequest

if TYPE_CHECKING:
    from ..families.base import Family, Generation


@dataclass
class Patch:
    """One result image, ready to paste at (x, y) of the request's `image`."""

    image: Image.Image
    x: int
    y: int
    seed: int
    labels: dict[str, Any] = field(default_factory=dict)  # extra fields of its image object


def family_of(gen: Generation) -> Family:
    from ..families import family

    return family(gen.preset.family)


@dataclass
class Workspace:
    """The selection-aware crop of one request: region, working-size image and mask."""

    region: Region
    image: Image.Image  # RGB at working size
    mask: Image.Image | None  # full-size 8-bit mask (None = whole image)
    work_mask: Image.Image | None  # mask at working size

    def patches(self, results: list[Image.Image], seeds: list[int], feather: int) -> list[Patch]:
        return [
            Patch(to_patch(img, self.region, self.mask, feather), self.region.x, self.region.y, s)
            for img, s in zip(results, seeds, strict=True)
        ]

    def crop(self, img: Image.Image, resample: int = Image.LANCZOS) -> Image.Image:
        """Crop another full-size image (a control image, a depth map) to this workspace."""
        return crop_to_work(img, self.region, resample)


def workspace(req: OpRequest) -> Workspace:
    image = req.images["image"]
    mask = to_mask(req.images["mask"]) if "mask" in req.images else None
    resolution = req.params.get("resolution") or req.preset.resolution
    region = find_region(image.size, mask, req.params["padding"], resolution)
    work = crop_to_work(image.convert("RGB"), region)
    work_mask = crop_to_work(mask, region, Image.BILINEAR) if mask is not None else None
    return Workspace(region, work, mask, work_mask)


def check_same_size(req: OpRequest, name: str) -> None:
    """A mask or control image must have the size of `image` (they are cropped together)."""
    if name in req.images and "image" in req.images:
        got, want = req.images[name].size, req.images["image"].size
        if got != want:
            raise RequestError(
                ErrorCode.SIZE_MISMATCH,
                f"images.{name} is {got[0]}x{got[1]} but images.image is {want[0]}x{want[1]}",
                f"images.{name}",
            )


def check_mask(req: OpRequest) -> None:
    """A mask must match `image` and select something (else there is nothing to repaint)."""
    if "mask" not in req.images:
        return
    check_same_size(req, "mask")
    if to_mask(req.images["mask"]).getbbox() is None:
        raise RequestError(
            ErrorCode.INVALID_VALUE, "images.mask is empty: nothing is selected", "images.mask"
        )


def check_strength(req: OpRequest) -> None:
    """diffusers runs int(steps * strength) steps: at least one must remain."""
    strength = req.params.get("strength")
    if strength is not None and int(req.params["steps"] * strength) < 1:
        raise RequestError(
            ErrorCode.INVALID_VALUE,
            f"params.steps ({req.params['steps']}) x params.strength ({strength:g}) leaves no step to run",
            "params.strength",
        )


def require_image(req: OpRequest, name: str) -> None:
    if name not in req.images:
        raise RequestError(
            ErrorCode.MISSING_FIELD, f"images.{name} is required for {req.op}", f"images.{name}"
        )


def full_size(req: OpRequest) -> tuple[int, int]:
    """Output size for ops without an input image: width/height, default the preset's native."""
    w = req.params.get("width") or req.preset.resolution
    h = req.params.get("height") or req.preset.resolution
    return (w // 8 * 8, h // 8 * 8)


def whole(images: list[Image.Image], seeds: list[int]) -> list[Patch]:
    """Results that cover the whole output (txt2img, upscale): opaque, at (0, 0)."""
    return [Patch(img.convert("RGBA"), 0, 0, s) for img, s in zip(images, seeds, strict=True)]
