"""Full-size Stable Diffusion 1.5 architecture with seeded random weights, built offline for benchmarks.

The benchmarks must pay what a real SD 1.5 pays per step, or "the daemon costs nothing" proves nothing:
the tiny models are so cheap that fixed costs dominate. Nothing here downloads anything. The configs
are the published SD 1.5 ones (UNet ~860M parameters, 4-level VAE, CLIP ViT-L/14 text encoder); the
tokenizer is the real 49408-token CLIP BPE, read from the copy that ships in the `open-clip-torch`
wheel. Weights are random, so pictures are noise-like, but every multiply-add of the real model happens.

Weights are saved as float16 safetensors (about 2.0 GB for base, 0.7 GB for the ControlNet, half of
float32); `from_pretrained(torch_dtype=torch.float32)` casts them back on load, so CPU runs compute in
float32 exactly like a float32 checkpoint would.

Layout under ``root/fullsize-v{FULLSIZE_VERSION}``:

- ``base/``: StableDiffusionPipeline (UNet 4 channels, 512 px native resolution).
- ``controlnet-canny/``: ControlNetModel.from_unet(base UNet) with SD 1.5 ControlNet's
  conditioning embedding (16, 32, 96, 256); its zero convs get small random weights so it matters.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import build_once
from .tiny.common import bytes_to_unicode, controlnet_from_unet, manual_seed, no_safety, sd_scheduler

if TYPE_CHECKING:  # heavy imports stay lazy so importing this module is cheap
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

FULLSIZE_VERSION = "1"
NATIVE_RESOLUTION = 512
FOLDERS = ("base", "controlnet-canny")

CLIP_VOCAB_SIZE = 49408
_MAX_TOKENS = 77
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- tokenizer


def clip_bpe_path() -> Path:
    """The CLIP BPE merges file inside the installed `open_clip` package (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / _BPE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the real CLIP vocabulary ({_BPE_FILE}) ships in the open-clip-torch wheel: "
        "`pip install --no-deps open-clip-torch` (no model download is involved)"
    )


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab laid out exactly as OpenAI's tokenizer does: bytes, bytes</w>, merges, specials."""
    lines = gzip.open(bpe_path or clip_bpe_path()).read().decode("utf-8").split("\n")
    # line 0 is a version header; CLIP keeps the first 49152 - 256 - 2 merges
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"CLIP vocab has {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, [(a, b) for a, b in merges]


def make_tokenizer() -> CLIPTokenizer:
    """The real CLIP tokenizer (``vocab=``/``merges=``: transformers 5 ignores file arguments)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_TOKENS)


# --------------------------------------------------------------------------- models (SD 1.5 configs)


def make_text_encoder(seed: int) -> CLIPTextModel:
    """CLIP ViT-L/14's text tower as SD 1.5 ships it (ids 0/1/2 are the published config's)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=_MAX_TOKENS,
        hidden_act="quick_gelu",
        projection_dim=768,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    manual_seed(seed, "fullsize/text_encoder")
    return CLIPTextModel(config).eval()


def make_vae(seed: int) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    manual_seed(seed, "fullsize/vae")
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=NATIVE_RESOLUTION,
        scaling_factor=0.18215,
    ).eval()


def make_unet(seed: int) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    manual_seed(seed, "fullsize/unet")
    return UNet2DConditionModel(
        sample_size=NATIVE_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
        norm_eps=1e-5,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
        mid_block_scale_factor=1,
    ).eval()


def make_controlnet(unet: UNet2DConditionModel, seed: int) -> ControlNetModel:
    """An SD 1.5 ControlNet copied from the UNet; random zero convs so it changes the picture."""
    return controlnet_from_unet(unet, (16, 32, 96, 256), seed, "fullsize/controlnet-canny", std=0.01)


# --------------------------------------------------------------------------- folders

_README = """# Underpaint full-size benchmark models (layout v{version}, seed {seed})

Stable Diffusion 1.5's architecture (UNet, VAE, CLIP ViT-L/14 text encoder, real CLIP tokenizer,
PNDM scheduler) with random weights, built offline by `underpaint.daemon.builders.fullsize` so benchmarks pay
the real model's compute. Saved as float16 safetensors. Outputs are noise-like: nothing was trained.

Folders: {folders}.
"""


def build_fullsize_models(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build every folder under ``dest`` (created if missing) and return ``dest``."""
    from diffusers import StableDiffusionPipeline

    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    say("tokenizer (CLIP BPE, 49408 tokens) + text encoder (CLIP ViT-L/14)")
    parts: dict[str, Any] = {"tokenizer": make_tokenizer(), "text_encoder": make_text_encoder(seed)}
    say("vae (128, 256, 512, 512)")
    parts["vae"] = make_vae(seed)
    say("unet (320, 640, 1280, 1280)")
    parts["unet"] = make_unet(seed)
    say("controlnet-canny (from the unet)")
    controlnet = make_controlnet(parts["unet"], seed).half()
    say("saving float16 safetensors")
    controlnet.save_pretrained(dest / "controlnet-canny")
    del controlnet
    for name in ("text_encoder", "vae", "unet"):
        parts[name] = parts[name].half()
    pipe = StableDiffusionPipeline(**parts, scheduler=sd_scheduler(), **no_safety())
    pipe.save_pretrained(dest / "base")
    readme = _README.format(version=FULLSIZE_VERSION, seed=seed, folders=", ".join(FOLDERS))
    (dest / "README.md").write_text(readme, encoding="utf-8")
    say("done")
    return dest


def ensure_fullsize_models(root: Path, progress: Progress | None = None) -> Path:
    """Return ``root/fullsize-v{FULLSIZE_VERSION}``, building it atomically (temp dir + rename) if missing.

    Two processes may build at once: whoever renames first wins and the loser drops its copy.
    """
    return build_once(
        Path(root) / f"fullsize-v{FULLSIZE_VERSION}",
        lambda tmp: build_fullsize_models(tmp, progress=progress),
    )
