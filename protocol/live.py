"""The Live sampler setting (PROTOCOL.md 6.7 `live`) as an editor applies it: a preset's few-step,
low-guidance params merged into a job's. Standard library only: the editor plug-ins ship a copy."""

from __future__ import annotations

from typing import Any

#: What an editor uses for a preset whose entry carries no `live` map (a daemon older than the map).
LIVE_FALLBACK: dict[str, Any] = {"steps": 4, "guidance_scale": 2.0}


def live_setting(entry: dict[str, Any]) -> dict[str, Any]:
    """A preset's `live` map from the daemon's welcome or `models`, or the fallback when it has none."""
    live = entry.get("live") if isinstance(entry, dict) else None
    return dict(live) if isinstance(live, dict) else dict(LIVE_FALLBACK)


def merge_live(params: dict[str, Any], live: dict[str, Any], taken: set[str] | None = None) -> dict[str, Any]:
    """`params` with the live setting over them, only its keys in `taken` (None: every key; the op's
    `op_specs` decide what is sent). Its `loras` join the painter's: a LoRA the painter chose keeps
    the painter's weight (the daemon refuses a name twice)."""
    out = dict(params)
    for name, value in live.items():
        if taken is not None and name not in taken:
            continue
        if name != "loras":
            out[name] = value
            continue
        mine = {str(lora.get("name")) for lora in out.get("loras") or []}
        extra = [
            {"name": lora["name"], "weight": lora.get("weight", 1.0)}
            for lora in value or []
            if isinstance(lora, dict) and isinstance(lora.get("name"), str) and lora["name"] not in mine
        ]
        if extra:
            out["loras"] = [*(out.get("loras") or []), *extra]
    return out
