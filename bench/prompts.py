"""Section 8: what a painter's prompt costs (issue 13). A weighted prompt that fills all the CLIP
windows the daemon reads vs a plain one-window prompt, the same txt2img job otherwise, interleaved, on
the tiny sd15 and sdxl presets: the ratio of job times (submit -> result in the client, so the token
count before `accepted` is in it as well as compel's encoding), and the extra milliseconds.

Hard checks: `(phrase:1.0)` gives the plain prompt's pixels bit for bit, and the weighted prompt gives
other pixels than the same words without weights (the weights reach the model).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from underpaint.daemon.builders.tiny import ensure_tiny
from underpaint.daemon.prompts import MAX_WINDOWS, parse, windows
from underpaint.protocol import Client

from .common import PROMPT, SEED, Report, interleaved, median, ms, progress, result_rgb

SECTION = "8. Prompts"
#: tiny preset -> (tiny family, folder whose tokenizer reads the prompt)
PRESETS = {"tiny": ("sd15", "base"), "tiny-sdxl": ("sdxl", "base")}
#: What painters write: emphasis, softened phrases, nesting, a literal parenthesis.
PHRASES = [
    "(masterpiece:1.2)",
    "a (red fox:1.3) curled up asleep",
    "in a ((snowy:1.1) birch forest:1.15)",
    "(soft morning light:0.8)",
    "oil painting with visible brush strokes",
    "muted (palette:0.9) of greys and ochres",
    "(shallow depth of field)",
    "painted in the manner of the old masters \\(circa 1650\\)",
    "frost on the branches",
    "a thin line of smoke from a distant chimney",
    "(tracks in the snow:1.25)",
]


def long_prompt(tokenizer: Any) -> str:
    """The PHRASES, repeated until one more would need more windows than the daemon reads."""
    text, i = "", 0
    while True:
        longer = f"{text}, {PHRASES[i % len(PHRASES)]}" if text else PHRASES[0]
        if windows(tokenizer, parse(longer)) > MAX_WINDOWS:
            return text
        text, i = longer, i + 1


def _tokenizer(models_dir: Path, preset: str) -> Any:
    family, folder = PRESETS[preset]
    return AutoTokenizer.from_pretrained(ensure_tiny(models_dir, family) / folder, subfolder="tokenizer")


def measure(report: Report, client: Client, models_dir: Path, reps: int, size: int, steps: int) -> None:
    bar = progress("prompts", len(PRESETS) * 2 * (reps + 2))
    params = {"seed": SEED, "steps": steps, "width": size, "height": size}
    report.data["prompts"] = {
        preset: _preset(report, Jobs(client, preset, params), _tokenizer(models_dir, preset), reps, bar)
        for preset in PRESETS
    }
    bar.close()


class Jobs:
    """txt2img jobs on one preset that differ only in their prompt."""

    def __init__(self, client: Client, preset: str, params: dict[str, Any]) -> None:
        self.client, self.preset, self.params = client, preset, params

    def run(self, prompt: str) -> tuple[float, dict[str, Any]]:
        """(seconds from submit to result in the client, the result)."""
        t0 = time.perf_counter()
        result = self.client.run("txt2img", {**self.params, "prompt": prompt}, model=self.preset)
        return time.perf_counter() - t0, result

    def seconds(self, prompt: str) -> Any:
        return lambda: self.run(prompt)[0]


def _preset(report: Report, jobs: Jobs, tokenizer: Any, reps: int, bar: Any) -> dict[str, Any]:
    weighted = long_prompt(tokenizer)
    _check(report, jobs, weighted)
    bar.update(4)
    plain_runs, weighted_runs = interleaved(jobs.seconds(PROMPT), jobs.seconds(weighted), reps, bar)
    ratios = [w / p for w, p in zip(weighted_runs, plain_runs, strict=True)]
    prompt = parse(weighted)
    n_tokens = len(tokenizer(prompt.plain, add_special_tokens=False).input_ids)
    size, steps = jobs.params["width"], jobs.params["steps"]
    report.add(
        SECTION,
        f"{jobs.preset}: {n_tokens}-token prompt with {len(prompt.groups)} weighted groups ({MAX_WINDOWS} "
        f"windows) vs a plain one-window prompt; txt2img {size}x{size}, {steps} steps",
        f"{median(ratios):.2f}x job time ({ms(median(weighted_runs))} vs {ms(median(plain_runs))})",
        note=f"{ms(median(weighted_runs) - median(plain_runs))} more per job, submit -> result; "
        f"{reps} interleaved pairs",
    )
    return {"plain": plain_runs, "weighted": weighted_runs, "tokens": n_tokens, "prompt": weighted}


def _check(report: Report, jobs: Jobs, weighted: str) -> None:
    """The hard checks: weight 1 is the plain prompt, other weights reach the model. These first
    jobs also warm the preset up."""
    plain, one = (result_rgb(jobs.run(p)[1]) for p in (PROMPT, f"({PROMPT}:1.0)"))
    same = np.array_equal(plain, one) and plain.std() > 0
    report.check(f"prompts: (phrase:1.0) gives the plain prompt's pixels ({jobs.preset})", same)
    unweighted = parse(weighted).plain.replace("(", "\\(").replace(")", "\\)")
    with_weights, without = (result_rgb(jobs.run(p)[1]) for p in (weighted, unweighted))
    report.check(
        f"prompts: weights change the pixels ({jobs.preset})", not np.array_equal(with_weights, without)
    )
