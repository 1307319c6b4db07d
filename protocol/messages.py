"""Constants and tiny helpers shared by the daemon and every client (PROTOCOL.md sections 1-6)."""

from __future__ import annotations

from typing import Any

import msgpack

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
DEFAULT_PORT = 57321
DEFAULT_ENDPOINT = f"tcp://127.0.0.1:{DEFAULT_PORT}"

# ZMTP heartbeats both sides set (PROTOCOL.md 1.1): a peer silent for HEARTBEAT_TIMEOUT_MS is dropped.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
HEARTBEAT_TTL_MS = 6000

# The most characters a submit's `lane` may have (PROTOCOL.md 9.6).
MAX_LANE_CHARS = 64

# Event types that end a job: a client waiting on a job stops at the first of these.
TERMINAL_EVENTS = frozenset({"result", "cancelled", "error"})


class ErrorCode:
    """Stable machine-readable error codes (PROTOCOL.md 6.9)."""

    MALFORMED_MESSAGE = "malformed_message"
    MESSAGE_TOO_LARGE = "message_too_large"
    UNKNOWN_TYPE = "unknown_type"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    OUT_OF_RANGE = "out_of_range"
    INVALID_VALUE = "invalid_value"
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_LARGE = "image_too_large"
    SIZE_MISMATCH = "size_mismatch"
    UNKNOWN_OP = "unknown_op"
    UNSUPPORTED_OP = "unsupported_op"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_SCHEDULER = "unknown_scheduler"
    UNKNOWN_PREPROCESSOR = "unknown_preprocessor"
    UNKNOWN_CONTROLNET = "unknown_controlnet"
    QUEUE_FULL = "queue_full"
    UNKNOWN_JOB = "unknown_job"
    NOT_OWNER = "not_owner"
    MODEL_UNAVAILABLE = "model_unavailable"
    OUT_OF_MEMORY = "out_of_memory"
    JOB_FAILED = "job_failed"
    SHUTTING_DOWN = "shutting_down"
    RESULT_EXPIRED = "result_expired"
    JOB_TOO_LARGE = "job_too_large"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    REQUEST_CANCELLED = "request_cancelled"
    WORKER_LOST = "worker_lost"
    # Made by the Python client itself, never sent by a daemon: the daemon restarted (or forgot the
    # session) while a job was queued or running, so no final event will ever come for it.
    JOB_LOST = "job_lost"


def pack(message: dict[str, Any]) -> bytes:
    """Encode one message as a msgpack frame (bin for bytes, str for text)."""
    return msgpack.packb(message, use_bin_type=True)


def unpack(frame: bytes | memoryview) -> Any:
    """Decode one frame; raises ValueError-family exceptions on garbage."""
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


def raw_image(width: int, height: int, channels: int, data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Build a raw image object: 8-bit, row-major, channels interleaved R,G,B,A."""
    return {"format": "raw", "width": width, "height": height, "channels": channels, "data": data}


# -- binary frames (feature "frames", PROTOCOL.md section 4.1) ----------------------------------------
FRAME_MIN_BYTES = 64 * 1024  # smaller payloads stay inline: a frame of their own would cost more


def split_frames(message: Any) -> tuple[Any, list[Any]]:
    """Move every large `data` payload of `message` into extra frames.

    Returns a copy of `message` (the caller's maps are not touched) whose moved payloads' maps say
    `frame: k` (1-based) instead of `data`, and the payloads in order, to be sent after the msgpack
    header frame without being copied into it.
    """
    frames: list[Any] = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {key: walk(value) for key, value in node.items() if key != "data"}
            data = node.get("data")
            if isinstance(data, (bytes, bytearray, memoryview)) and len(data) >= FRAME_MIN_BYTES:
                frames.append(data)
                out["frame"] = len(frames)
            elif "data" in node:
                out["data"] = data
            return out
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(message), frames


def attach_frames(message: Any, frames: list[Any]) -> None:
    """Put extra frames back as `data` wherever a map says `frame: k`; ValueError on a bad `k`."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            k = node.get("frame")
            if "frame" in node and "data" not in node:
                if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(frames):
                    raise ValueError(
                        f"frame {k!r} does not exist: the message has {len(frames)} extra frames"
                    )
                node["data"] = frames[k - 1]
                del node["frame"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message)
