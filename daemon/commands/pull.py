"""`underpaint pull PRESET...`: fetch everything a preset will load, ahead of time, so that a painter's
first job does not wait minutes for a download (or fail on a machine that goes offline later).

Every source of the preset is handled on its own and gets one summary line: hub repos are downloaded
into the Hugging Face cache (the very files `from_pretrained` will read later: diffusers' own
`DiffusionPipeline.download` for whole pipelines, `snapshot_download` with the right patterns for a
single model, a subfolder's model, a CLIP or a LoRA), local files and folders are checked to exist,
and the built-in tiny and full-size presets are built now. A source that fails says why and the
others go on; the exit status is 1 when any failed.

Which files a role reads is each family's loading code (daemon/families); `plan` mirrors it per
family and role, so that pulling fetches neither less (a first job would download) nor much more
(safety checkers and text encoders that Underpaint never loads are skipped).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...protocol.loading import byte_size
from ..config import FULLSIZE_PREFIX, TINY_PREFIX, Config, Preset, data_home
from ..serving.loading import is_hub_id

#: Components that the families pass as None (never loaded), by family and role: a pipeline download
#: skips their folders.
_SAFETY = ("safety_checker",)
_NO_CHECKS = ("safety_checker", "feature_extractor", "watermarker")
_SD2_FROM_BASE = ("vae", "text_encoder", "tokenizer")
#: unCLIP loads its folders one by one (its model_index.json does not load back: families/unclip.py).
_UNCLIP_BASE = (
    "prior",
    "decoder",
    "text_proj",
    "super_res_first",
    "super_res_last",
    "text_encoder",
    "tokenizer",
    "prior_scheduler",
    "decoder_scheduler",
    "super_res_scheduler",
)
_UNCLIP_VARIATION = ("image_encoder", "feature_extractor")
#: sd-variation's hub repo keeps its diffusers weights on a branch (families/sd_variation.py).
_REVISIONS = {"lambdalabs/sd-image-variations-diffusers": "v2.0"}
_WEIGHTS = (".safetensors", ".bin")
_SMALL = (".json", ".txt", ".model")  # configs, tokenizer vocabularies, shard indexes


@dataclass(frozen=True)
class Fetch:
    """One source of a preset and how its files are chosen.

    `how`: "pipeline" (a diffusers pipeline repo, minus the `skip` components), "folders" (only the
    `folders` of a repo, each a model, a tokenizer or a scheduler; "" is the repo's top level),
    "configs" (only config files: single-file checkpoints' configs), or "builtin" (built locally).
    """

    preset: str
    role: str
    source: str
    how: str
    skip: tuple[str, ...] = ()
    folders: tuple[str, ...] = ("",)
    variant: str | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        return f"{self.preset} {self.role}"


@dataclass
class Outcome:
    fetch: Fetch
    ok: bool
    said: str  # the summary line's text after the label
    seconds: float = 0.0


@dataclass
class Hub:
    """Whether the hub can be asked (checked once, on the first hub source)."""

    offline_reason: str | None = None
    checked: bool = False
    probe: Callable[[], str | None] | None = None

    def reason(self) -> str | None:
        """None when downloads can be tried, else why not (offline mode, or no answer)."""
        if not self.checked:
            self.checked = True
            self.offline_reason = _offline_reason()
            if self.offline_reason is None and self.probe is not None:
                self.offline_reason = self.probe()
        return self.offline_reason


# -- what to fetch -----------------------------------------------------------------------------------
def plan(preset: Preset) -> list[Fetch]:
    """Every source the preset's roles, ControlNets and LoRAs load from, with how to fetch each."""
    if preset.builtin:
        source = next(iter(preset.sources.values()))
        return [Fetch(preset.name, f"models ({preset.builtin})", source, "builtin")]
    fetches = [_role(preset, role, source) for role, source in preset.sources.items()]
    for name, source in preset.controlnets.items():
        folder = "unet" if preset.family == "kandinsky22" else ""  # Kandinsky's are decoder pipelines
        fetches.append(_model(preset, f"controlnet {name}", source, folder, preset.variant))
    for name, source in preset.loras.items():
        fetches.append(_model(preset, f"LoRA {name}", str(Path(source).expanduser()), "", None))
    if preset.single_file_config:  # a hub repo's configs are fetched, a local folder checked
        fetches.append(Fetch(preset.name, "single-file configs", preset.single_file_config, "configs"))
    return fetches


def _role(preset: Preset, role: str, source: str) -> Fetch:
    """How one role of the preset's family loads (mirrors the families' `load`)."""
    fam, variant = preset.family, preset.variant
    if role == "clip":  # transformers' CLIPModel, tokenizer and processor: no diffusers variant
        return _model(preset, role, source, "", None)
    unet_only = {
        "sd15": ("inpaint", "instruct"),
        "sd2": ("instruct",),
        "sdxl": ("refiner", "inpaint"),
        "kandinsky22": ("inpaint",),
    }
    if role in unet_only.get(fam, ()):
        return _model(preset, role, source, "unet", variant)
    if fam == "sdxl" and role == "vae":  # a VAE repo has no variants (families/sdxl.py load_vae)
        return _model(preset, role, source, "", None)
    if fam == "unclip":
        folders = _UNCLIP_VARIATION if role == "variation" else _UNCLIP_BASE
        return Fetch(preset.name, role, source, "folders", folders=folders, variant=variant)
    skip: tuple[str, ...] = ()
    if fam in ("sd15", "sd2", "sd-variation") and role == "base":
        skip = _SAFETY
    elif fam == "sd2" and role == "depth":
        skip = _SD2_FROM_BASE
    elif fam == "sd2" and role == "inpaint":
        skip = _SD2_FROM_BASE + ("safety_checker", "feature_extractor")
    elif fam == "sdxl" and role == "base" and preset.sources.get("vae"):
        skip = ("vae",)
    elif fam == "if":
        skip = _NO_CHECKS + (("text_encoder", "tokenizer") if role == "stage_2" else ())
    return Fetch(
        preset.name, role, source, "pipeline", skip, variant=variant, revision=_REVISIONS.get(source)
    )


def _model(preset: Preset, role: str, source: str, folder: str, variant: str | None) -> Fetch:
    return Fetch(preset.name, role, source, "folders", folders=(folder,), variant=variant)


# -- fetching ------------------------------------------------------------------------------------------
def pull(fetch: Fetch, hub: Hub, models_root: Path) -> Outcome:
    """Fetch one source; every failure becomes an Outcome saying why (never a traceback)."""
    t0 = time.monotonic()
    try:
        said = _pull(fetch, hub, models_root)
        ok = True
    except PullError as exc:
        ok, said = False, str(exc)
    except Exception as exc:  # the libraries' own errors: said in one line
        ok, said = False, f"{type(exc).__name__}: {_first_line(exc)}"
    return Outcome(fetch, ok, said, time.monotonic() - t0)


class PullError(Exception):
    """A source that cannot be fetched, with a message for the painter."""


def _pull(fetch: Fetch, hub: Hub, models_root: Path) -> str:
    source = fetch.source
    if fetch.how == "builtin":
        return _build(source, models_root)
    path = Path(source).expanduser()
    if path.exists():
        from ..serving.models import weight_file_bytes

        kind = "file" if path.is_file() else "folder"
        return f"local {kind} {path} ({byte_size(weight_file_bytes(path))} of weights)"
    if not is_hub_id(source):
        raise PullError(f"{source}: no such file or folder, and not a hub repo id (org/name)")
    reason = hub.reason()
    if reason is not None and not _in_cache(source):
        raise PullError(f"{source}: {reason}, and the repo is not in the Hugging Face cache ({_cache_dir()})")
    local_only = reason is not None
    if fetch.how == "pipeline":
        folder = _pipeline(fetch, local_only)
    else:
        folder = _folders(fetch, local_only)
    where = f"in the cache (not checked against the hub: {reason})" if reason else "in the cache, up to date"
    return f"{source}: {where}, {byte_size(_snapshot_bytes(folder))}"


def _pipeline(fetch: Fetch, local_only: bool) -> Path:
    """diffusers picks the files `from_pretrained` reads (the variant's, safetensors first), minus
    the components passed as None."""
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = dict.fromkeys(fetch.skip)
    if fetch.variant:
        kwargs["variant"] = fetch.variant
    if fetch.revision:
        kwargs["revision"] = fetch.revision
    try:
        return Path(DiffusionPipeline.download(fetch.source, local_files_only=local_only, **kwargs))
    except Exception as exc:
        if fetch.variant and "variant" in str(exc):  # IF's stage III has no fp16 files: load's fallback
            kwargs.pop("variant")
            return Path(DiffusionPipeline.download(fetch.source, local_files_only=local_only, **kwargs))
        raise


def _folders(fetch: Fetch, local_only: bool) -> Path:
    """The configs and the weight files (variant, then safetensors, first) of each wanted folder."""
    from huggingface_hub import HfApi, snapshot_download

    if local_only:
        folder = Path(snapshot_download(fetch.source, revision=fetch.revision, local_files_only=True))
        files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        missing = [
            f or "(top level)" for f in fetch.folders if not _choose(files, f, fetch.variant, fetch.how)
        ]
        if missing:
            raise PullError(f"{fetch.source}: the cached copy lacks the weights of {missing}")
        return folder
    files = HfApi().list_repo_files(fetch.source, revision=fetch.revision)
    patterns: list[str] = []
    for sub in fetch.folders:
        chosen = _choose(files, sub, fetch.variant, fetch.how)
        if not chosen:
            where = f"folder {sub!r}" if sub else "its top level"
            raise PullError(f"{fetch.source}: no model files in {where} of the repo")
        patterns += chosen
    return Path(snapshot_download(fetch.source, revision=fetch.revision, allow_patterns=patterns))


def _choose(files: list[str], folder: str, variant: str | None, how: str) -> list[str]:
    """Of a repo's `files`, those of `folder` that loading reads: its small files (configs, tokenizer
    files) and one set of weights: the variant's safetensors, else plain safetensors, else the
    variant's .bin, else plain .bin (what diffusers and transformers prefer)."""
    prefix = f"{folder}/" if folder else ""
    if how == "configs":  # from_single_file reads the configs of every sub-folder of the repo
        return sorted(f for f in files if f.startswith(prefix) and f.endswith(_SMALL))
    here = [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
    small = [f for f in here if f.endswith(_SMALL)]
    for suffix in (".safetensors", ".bin"):
        for want in (variant, None) if variant else (None,):
            weights = [f for f in here if f.endswith(suffix) and _variant_of(f, suffix) == want]
            if weights:
                return sorted(small + weights)
    return []


def _variant_of(name: str, suffix: str) -> str | None:
    """The variant of a weight file: "fp16" for `x.fp16.safetensors` or `x.fp16-00001-of-00002.safetensors`,
    None for plain files."""
    stem = name.rsplit("/", 1)[-1][: -len(suffix)]
    if "-of-" in stem:
        stem = stem.rsplit("-", 3)[0]
    return stem.split(".", 1)[1] if "." in stem else None


def _build(source: str, models_root: Path) -> str:
    """Build a tiny family's or the full-size models' folders now (the builders say each part)."""
    say = _say_indented
    if source.startswith(TINY_PREFIX):
        from ..builders.atomic import build_once
        from ..builders.tiny import TINY_VERSION, build_family

        family = source[len(TINY_PREFIX) :].partition("/")[0]
        final = models_root / f"tiny-v{TINY_VERSION}" / family
        existed = final.is_dir()
        build_once(final, lambda tmp: build_family(family, tmp, progress=say))
        return f"tiny {family} models {'already built' if existed else 'built'} in {final}"
    if source.startswith(FULLSIZE_PREFIX):
        from ..builders.fullsize import FULLSIZE_VERSION, ensure_fullsize_models

        final = models_root / f"fullsize-v{FULLSIZE_VERSION}"
        existed = final.is_dir()
        ensure_fullsize_models(models_root, progress=say)
        return f"full-size random models {'already built' if existed else 'built'} in {final}"
    raise PullError(f"{source}: not a built-in model")


def _say_indented(message: str) -> None:
    print(f"    building {message}", file=sys.stderr, flush=True)


# -- the hub and its cache ----------------------------------------------------------------------------
def _offline_reason() -> str | None:
    from huggingface_hub import constants

    return "offline mode (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else None


def probe_hub(timeout: float = 10.0) -> str | None:
    """None when the hub answers, else why not: tried once, so an unreachable hub costs one timeout,
    not one per source (the libraries retry each download)."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:
        return f"the hub ({constants.ENDPOINT}) cannot be reached ({type(exc).__name__}: {_first_line(exc)})"
    return None


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _in_cache(repo: str) -> bool:
    """Whether any snapshot of `repo` is in the cache (what offline loading can use at all)."""
    from huggingface_hub.file_download import repo_folder_name

    snapshots = _cache_dir() / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _snapshot_bytes(folder: Path) -> int:
    """Bytes of the fetched files (the snapshot's links resolved to their blobs)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


# -- the command ---------------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "pull",
        help="fetch (or build) everything a preset loads, ahead of its first job",
        description="Fetch every source a preset loads (each role's model, its ControlNets, its LoRAs "
        "that are hub repos, the CLIP that ranks) into the Hugging Face cache, so the daemon's first "
        "job on it loads from disk. Whole pipeline repos get the files from_pretrained reads (the "
        "preset's variant, safetensors first, no safety checker); single models only their folder's "
        "weights. Local files and folders are checked to exist; the built-in tiny and full-size "
        "presets are built now (into --build-dir). Each source gets one summary line; "
        "a source that fails (offline, unknown repo, missing file) says why and the others go on. "
        "Exit status: 0 when every source is ready, 1 when any failed, 2 for an unknown preset.",
    )
    p.add_argument("presets", nargs="+", metavar="PRESET", help="preset names (see `underpaint models`)")
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="your presets file, merged over the built-in ones"
    )
    p.add_argument(
        "--build-dir",
        type=Path,
        metavar="DIR",
        help="where the tiny and full-size built-in models are built, as `serve --build-dir` "
        "(default: $UNDERPAINT_HOME/models or ~/.cache/underpaint/models)",
    )
    p.set_defaults(func=cmd_pull)


def cmd_pull(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..errors import ConfigError

    try:
        config = load_config(args.config)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"underpaint pull: {exc}", file=sys.stderr)
        return 2
    unknown = [name for name in args.presets if name not in config.presets]
    if unknown:
        print(
            f"underpaint pull: unknown preset{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(config.presets))}",
            file=sys.stderr,
        )
        return 2
    return 0 if run(config, args.presets, args.build_dir) else 1


def run(config: Config, names: list[str], models_root: Path | None = None) -> bool:
    """Pull each preset's sources (each once, however many presets name it); True when all are ready."""
    root = models_root or data_home() / "models"
    hub = Hub(probe=probe_hub)
    seen: set[tuple[str, str, str, tuple[str, ...]]] = set()
    outcomes: list[Outcome] = []
    for name in names:
        for fetch in plan(config.presets[name]):
            key = (fetch.source, fetch.how, fetch.variant or "", fetch.folders)
            if key in seen:
                continue
            seen.add(key)
            print(f"{fetch.label}: {fetch.source} ...", file=sys.stderr, flush=True)
            outcome = pull(fetch, hub, root)
            outcomes.append(outcome)
            mark = "ok    " if outcome.ok else "FAILED"
            print(f"{mark} {fetch.label}: {outcome.said} ({outcome.seconds:.1f} s)", flush=True)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        repos = ", ".join(dict.fromkeys(o.fetch.source for o in failed))
        print(f"underpaint pull: {len(failed)} of {len(outcomes)} sources failed: {repos}", file=sys.stderr)
    else:
        print(f"underpaint pull: {len(outcomes)} sources ready", file=sys.stderr)
    return not failed
