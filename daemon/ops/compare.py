"""compare: the tour's own advice, try every model on the same prompt before choosing. One job runs
one op with the same parameters and seed on several presets, one after the other, and returns every
picture labelled with its preset, plus a summary per preset (family, timing, what it ignored)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ErrorCode, RequestError
from ..families import family
from ..families.base import Generation
from ..params import MAX_SEED, Limits
from ..progress import JobCancelled
from ..request import OpRequest
from . import estimate_steps
from .common import Patch

#: Decodes the images an op (with these params) takes: (op, params) -> images.
DecodeImages = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass
class Part:
    """The inner op as one preset runs it: its own validated params, and what it did not take."""

    request: OpRequest
    ignored: list[str]


@dataclass
class CompareRequest(OpRequest):
    parts: list[Part] = field(default_factory=list)


def prepare(
    params: dict[str, Any],
    raw: dict[str, Any],
    catalog: Any,
    models: Any,
    decode: DecodeImages,
    limits: Limits,
    ops: dict[str, Any],
) -> CompareRequest:
    """Validate the inner op for every preset before the job is accepted.

    `params` is the checked compare spec (`op`, `models`), `raw` the params as sent. Every preset
    gets the same seed (drawn now when none was sent) and only the parameters it takes; the rest are
    reported as `ignored`, never silently dropped.
    """
    op, names = params["op"], params["models"]
    inner_raw = {k: v for k, v in raw.items() if k not in ("op", "models")}
    if inner_raw.get("seed") is None:
        inner_raw["seed"] = random.randint(0, MAX_SEED)
    parts: list[Part] = []
    images: dict[str, Any] = {}
    for i, name in enumerate(names):
        path = f"params.models.{i}"
        try:
            preset = models.preset(name)
            spec = catalog.spec(preset, op)
        except RequestError as exc:
            raise RequestError(exc.code, exc.message, path) from None
        taken = {k: v for k, v in inner_raw.items() if k in spec.params}
        inner = spec.validate(taken)
        images.update({k: v for k, v in decode(op, inner).items() if k not in images})
        request = OpRequest(op, preset, inner, images)
        ops[op].check(request, limits)
        family(preset.family).check(request)
        parts.append(Part(request, sorted(set(inner_raw) - set(spec.params))))
    first = parts[0].request.preset
    return CompareRequest("compare", first, {**params, **inner_raw}, images, parts)


def run(gen: Generation, run_op: Callable[[str, Generation], list[Patch]]) -> list[Patch]:
    """Run each part in turn; a preset that fails is reported, the others still deliver."""
    req = gen.req
    assert isinstance(req, CompareRequest)
    patches: list[Patch] = []
    summary: list[dict[str, Any]] = []
    for i, part in enumerate(req.parts):
        later = [p.request for p in req.parts[i + 1 :]]
        gen.steps.after = sum(estimate_steps(r) * r.params.get("variations", 1) for r in later)
        sub = Generation(part.request, gen.models, gen.steps, gen.preprocessors)
        loads, t0 = gen.models.load_seconds, time.perf_counter()
        entry: dict[str, Any] = {"model": part.request.preset.name, "family": part.request.preset.family}
        try:
            got = run_op(req.params["op"], sub)
        except JobCancelled:
            raise
        except RequestError as exc:
            entry["error"] = {"code": exc.code, "message": exc.message}
            got = []
        except Exception as exc:  # one preset failing must not lose the others' pictures
            entry["error"] = {"code": ErrorCode.JOB_FAILED, "message": f"{type(exc).__name__}: {exc}"}
            got = []
        load = gen.models.load_seconds - loads
        entry |= {
            "load": load,
            "run": time.perf_counter() - t0 - load,
            "images": len(got),
            "params": part.request.params,
            "ignored": part.ignored,
        }
        for patch in got:
            patch.labels = {"model": entry["model"]}
        patches += got
        summary.append(entry)
    if not patches:
        first = next(e["error"] for e in summary if "error" in e)
        raise RequestError(first["code"], "every compared preset failed: " + first["message"])
    gen.extra["compare"] = summary
    return patches
