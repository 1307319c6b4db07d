"""Load model components on first use, keep them warm, share them between ops and presets, and unload
the least recently used ones under a memory budget.

The unit of caching is a *component*: what one role of a preset loads (a whole pipeline, a UNet, a
ControlNet...; the preset's family decides). Components are keyed by family, role kind and source,
so two presets naming the same weights share one copy. The pipeline an op runs is a *view* that the
family assembles from components with the diffusers constructors: switching ops loads nothing twice.

Each worker of a pool has its own manager, and so its own budget: room is made *before* a load when
the component's size is known (from an earlier load, or from its weight files on this machine), so a
worker does not go over its budget to find out; what could not be sized is evicted down to the
budget right after it loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence, Set
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import loras
from ..config import FULLSIZE_PREFIX, TINY_PREFIX, Config, Preset, data_home
from ..errors import ErrorCode, RequestError
from ..families import family
from .loading import LoadingSink, LoadWatch, byte_counter, describe

log = logging.getLogger("underpaint.models")

#: Building modules from configs (tiny model folders) and loading checkpoints never overlap across
#: threads (the worker loads; submit validation may need a tiny folder's tokenizer first): loading
#: patches torch's parameter registration process-wide (accelerate's `init_empty_weights`), so a
#: module built meanwhile in another thread would get empty "meta" weights.
CONSTRUCTION = threading.RLock()

Key = tuple[str, str, str]  # (family, role kind, source)


@dataclass
class Component:
    obj: Any
    nbytes: int
    load_seconds: float
    last_used: float
    label: str  # "preset/role" that loaded it, for logs


@dataclass
class View:
    pipe: Any
    keys: set[Key] = field(default_factory=set)  # the components it is built from


def module_bytes(*objects: Any) -> int:
    """Bytes of parameters and buffers of the torch modules in `objects` (each module counted once);
    pipelines and dicts are searched for their modules."""
    seen: set[int] = set()
    total = 0
    for module in _modules(objects):
        if id(module) in seen:
            continue
        seen.add(id(module))
        for t in list(module.parameters()) + list(module.buffers()):
            total += t.numel() * t.element_size()
    return total


def _modules(objects: Sequence[Any]) -> list[torch.nn.Module]:
    found: list[torch.nn.Module] = []
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
        elif isinstance(obj, dict):
            found += _modules(list(obj.values()))
        elif hasattr(obj, "components"):  # a DiffusionPipeline
            found += _modules(list(obj.components.values()))
    return found


def pipeline_bytes(pipe: Any) -> int:
    return module_bytes(pipe)


class ModelManager:
    """Owns every loaded model. Loading runs on the worker thread; `loaded_roles` may run anywhere."""

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
        self._components: OrderedDict[Key, Component] = OrderedDict()
        self._views: dict[tuple, View] = {}
        self._lock = threading.Lock()
        self._sizes: dict[Key, int] = {}  # bytes of every component loaded so far (room made before loads)
        self.load_seconds = 0.0  # running total, so a job can report its own share
        self.loads = 0  # components loaded so far (tests prove sharing with it)
        self._adapters: dict[tuple[Key, str], int] = {}  # (host component, LoRA name) -> bytes added
        self._loading: LoadingSink | None = None  # the running job's `loading` events (see reporting)

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

    def key(self, preset: Preset, role: str) -> Key:
        source = role_source(preset, role)
        return (preset.family, role.split(":", 1)[0], family(preset.family).cache_key(preset, role, source))

    def loaded_roles(self, preset: Preset) -> list[str]:
        """The preset's roles whose components are loaded now."""
        with self._lock:
            return self._loaded_roles(preset)

    def _component_roles(self, preset: Preset) -> list[str]:
        roles = list(preset.sources) + [f"controlnet:{name}" for name in preset.controlnets]
        return [role for role in roles if self.key(preset, role) in self._components]

    def _loaded_roles(self, preset: Preset) -> list[str]:
        """Loaded component roles, then `lora:<name>` for each of the preset's LoRAs loaded in them."""
        loaded = self._component_roles(preset)
        hosts = {self.key(preset, role) for role in loaded}
        adapters = {adapter for (key, adapter) in self._adapters if key in hosts}
        names = [name for name in sorted(preset.loras) if self._adapter(preset, name) in adapters]
        return loaded + [f"lora:{name}" for name in names]

    def warm(self) -> dict[str, list[str]]:
        """Every preset with a loaded component, and its loaded roles (what a worker reports to the
        front end, which sends jobs where their preset is warm)."""
        with self._lock:
            loaded = {p.name: self._loaded_roles(p) for p in self.config.presets.values()}
        return {name: roles for name, roles in loaded.items() if roles}

    def used_bytes(self) -> int:
        with self._lock:
            return sum(c.nbytes for c in self._components.values()) + sum(self._adapters.values())

    @contextmanager
    def reporting(self, sink: LoadingSink) -> Iterator[None]:
        """Within the block, every load this manager starts (a component or a LoRA) reports to `sink`
        while it runs (serving/loading.py). Loads run on one worker thread, one job at a time."""
        self._loading = sink
        try:
            yield
        finally:
            self._loading = None

    def _watch(self, preset: Preset, role: str, source: str) -> Any:
        """A LoadWatch for one load when a job listens, else nothing."""
        if self._loading is None:
            return nullcontext()
        local = self._builtin_folder(source)
        built = local is None or local.is_dir()
        return LoadWatch(
            self._loading, describe(preset.name, role, source, built), byte_counter(source, local)
        )

    # -- pipelines for ops ---------------------------------------------------------------------
    def view(
        self, preset: Preset, kind: str, extras: Sequence[str] = (), lora_list: Sequence[dict] = ()
    ) -> Any:
        """A pipeline of `kind` built by the preset's family over its shared, warm components, with
        the LoRAs of `lora_list` ({name, weight}) loaded and set, every other adapter off."""
        fam = family(preset.family)
        roles = fam.needs(preset, kind, extras)
        keys = {self.key(preset, role) for role in roles}
        parts = {role: self.component(preset, role, keep=keys) for role in roles}
        # Adapters are named by their source: presets sharing modules may give one name other files.
        adapters = [
            {"name": loras.adapter_id(self._lora_source(preset, lora["name"])), "weight": lora["weight"]}
            for lora in lora_list
        ]
        for lora, adapter in zip(lora_list, adapters, strict=True):
            hosts = {r: parts[r] for r in roles if r in fam.lora_roles}
            self._load_lora(preset, lora["name"], adapter["name"], hosts)
        self._evict(keep=keys)
        view_key = (preset.name, kind, tuple(extras))
        with self._lock:
            view = self._views.get(view_key)
        if view is None:
            view = View(fam.build_view(preset, kind, parts, extras), keys)
            with self._lock:
                self._views[view_key] = view
        loras.activate(view.pipe, adapters)  # shared modules: this job's adapter state, always
        return view.pipe

    def _load_lora(self, preset: Preset, name: str, adapter: str, parts: dict[str, Any]) -> None:
        """Load a LoRA of the preset, as adapter `adapter`, into the components (`parts`, role ->
        object) that lack it."""
        source = self._lora_source(preset, name)
        for role, component in parts.items():
            modules = loras.hosts(component)
            missing = any(adapter not in getattr(m, loras.LOADED_MARK, set()) for m in modules.values())
            watch = self._watch(preset, f"{role} LoRA {name!r}", source) if missing else nullcontext()
            try:
                with watch, CONSTRUCTION:
                    added = loras.load_into(adapter, source, modules)
            except Exception as exc:  # missing file, not a LoRA, layers that do not fit the model...
                raise RequestError(
                    ErrorCode.MODEL_UNAVAILABLE,
                    f"could not load LoRA {name!r} of model {preset.name!r} from {source!r} into its "
                    f"{role}: {type(exc).__name__}: {exc}",
                    "params.loras",
                ) from exc
            if not added:
                continue
            log.info("loaded LoRA %s of %s/%s (%.2f MB)", name, preset.name, role, added / 1e6)
            with self._lock:
                key = self.key(preset, role)
                self._adapters[(key, adapter)] = self._adapters.get((key, adapter), 0) + added

    def _lora_source(self, preset: Preset, name: str) -> str:
        return str(Path(preset.loras[name]).expanduser())

    def _adapter(self, preset: Preset, name: str) -> str:
        return loras.adapter_id(self._lora_source(preset, name))

    # -- components ------------------------------------------------------------------------------
    def component(self, preset: Preset, role: str, keep: Set[Key] = frozenset()) -> Any:
        """The loaded component of one role of a preset (loaded now if it is not, after making room
        for it under the budget without unloading what `keep` names)."""
        key = self.key(preset, role)
        with self._lock:
            comp = self._components.get(key)
            if comp is not None:
                comp.last_used = time.monotonic()
                self._components.move_to_end(key)
                return comp.obj
        t0 = time.perf_counter()  # building or downloading its files counts as loading it
        with self._watch(preset, role, role_source(preset, role)):
            self._make_room(key, self._expected_bytes(key, preset, role), keep | {key})
            obj = self._load(preset, role)
        seconds = time.perf_counter() - t0
        self.load_seconds += seconds
        self.loads += 1
        nbytes = module_bytes(obj)
        log.info("loaded %s/%s in %.2f s (%.1f MB)", preset.name, role, seconds, nbytes / 1e6)
        with self._lock:
            self._components[key] = Component(obj, nbytes, seconds, time.monotonic(), f"{preset.name}/{role}")
            self._sizes[key] = nbytes
        return obj

    def _expected_bytes(self, key: Key, preset: Preset, role: str) -> int:
        """What loading a component will add: its size when it was loaded before, else its weight
        files when they are on this machine, else 0 (unknown: the budget is enforced after loading)."""
        if key in self._sizes:
            return self._sizes[key]
        try:
            return weight_file_bytes(Path(self._source(preset, role)))
        except (OSError, ValueError):
            return 0

    def _make_room(self, key: Key, expected: int, keep: Set[Key]) -> None:
        """Unload least recently used components so that `expected` more bytes fit the budget."""
        if not self.budget_bytes or not expected:
            return
        while self.used_bytes() + expected > self.budget_bytes:
            with self._lock:
                victim = next((k for k in self._components if k not in keep), None)
            if victim is None:
                return
            self._drop(victim)

    def _evict(self, keep: set[Key]) -> None:
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

    def _drop(self, key: Key) -> int:
        """Forget a component (and the views built on it); returns its bytes."""
        with self._lock:
            comp = self._components.pop(key, None)
            adapters = sum(self._adapters.pop(k) for k in [k for k in self._adapters if k[0] == key])
            for view_key in [k for k, v in self._views.items() if key in v.keys]:
                del self._views[view_key]
        if comp is None:
            return 0
        log.info("unloaded %s (%.1f MB)", comp.label, (comp.nbytes + adapters) / 1e6)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return comp.nbytes + adapters

    def unload(self, preset_name: str) -> int:
        """Unload every component of a preset; returns the bytes freed."""
        preset = self.preset(preset_name)
        with self._lock:
            keys = [self.key(preset, role) for role in self._component_roles(preset)]
        return sum(self._drop(key) for key in keys)

    def unload_others(self, preset_name: str) -> None:
        """Free every component the preset does not use (to retry after running out of memory)."""
        preset = self.preset(preset_name)
        with self._lock:
            mine = {self.key(preset, role) for role in self._component_roles(preset)}
            keys = [k for k in self._components if k not in mine]
        for key in keys:
            self._drop(key)

    # -- loading ---------------------------------------------------------------------------------
    def _source(self, preset: Preset, role: str) -> str:
        """Where a role's weights are, building the generated (tiny, full-size) folders on first use.
        Any thread may ask (submit validation reads tokenizers from here)."""
        source = role_source(preset, role)
        folder = self._builtin_folder(source)
        if folder is None:
            return source
        if not folder.is_dir():
            with CONSTRUCTION:  # no other thread constructs or loads modules meanwhile
                self._build(source)
        return str(folder)

    def _builtin_folder(self, source: str) -> Path | None:
        """Where a generated (tiny, full-size) source lives once built; None for other sources."""
        if source.startswith(TINY_PREFIX):
            from ..builders.tiny import TINY_VERSION

            fam, _, folder = source[len(TINY_PREFIX) :].partition("/")
            return self.tiny_root / f"tiny-v{TINY_VERSION}" / fam / folder
        if source.startswith(FULLSIZE_PREFIX):
            from ..builders.fullsize import FULLSIZE_VERSION

            return self.tiny_root / f"fullsize-v{FULLSIZE_VERSION}" / source[len(FULLSIZE_PREFIX) :]
        return None

    def _build(self, source: str) -> None:
        """Build the generated models `source` names (once; another process may be building too)."""
        if source.startswith(TINY_PREFIX):
            from ..builders.tiny import ensure_tiny

            ensure_tiny(self.tiny_root, source[len(TINY_PREFIX) :].partition("/")[0])
        else:
            from ..builders.fullsize import ensure_fullsize_models

            ensure_fullsize_models(self.tiny_root)

    def _load(self, preset: Preset, role: str) -> Any:
        source = self._source(preset, role)
        try:
            with CONSTRUCTION:
                obj = family(preset.family).load(self, preset, role, source)
        except RequestError:
            raise
        except Exception as exc:  # missing files, offline hub, bad checkpoint...
            raise RequestError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"could not load {role} of model {preset.name!r} from {source!r}: "
                f"{type(exc).__name__}: {exc}",
                "model",
            ) from exc
        return _to_device(obj, self.device)

    def component_objects(self, preset_name: str) -> dict[str, Any]:
        """Loaded components of a preset by role (for inspection, tests and benchmarks)."""
        preset = self.preset(preset_name)
        with self._lock:
            return {
                role: self._components[self.key(preset, role)].obj for role in self._component_roles(preset)
            }


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def weight_file_bytes(path: Path) -> int:
    """Bytes of the weight files of a local checkpoint (a file, or a diffusers folder); 0 for what is
    not on this machine (a hub id: its files may be in no cache yet)."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in WEIGHT_SUFFIXES and f.is_file())


def role_source(preset: Preset, role: str) -> str:
    """Where a role's weights come from (`controlnet:<name>` roles: the preset's ControlNet table)."""
    kind, _, name = role.partition(":")
    return preset.controlnets[name] if kind == "controlnet" else preset.sources[role]


def _to_device(obj: Any, device: torch.device) -> Any:
    """Pipelines and modules move themselves; a dict of parts moves each of its modules."""
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj.to(device) if hasattr(obj, "to") else obj
