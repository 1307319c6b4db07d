"""Tiny, seeded, randomly initialised SD-1.x-style diffusers folders for offline tests.

Nothing here downloads anything: every component is constructed from a config and saved with
``save_pretrained`` so the daemon can load it through the very same ``from_pretrained`` path it
uses for real checkpoints. The weights are random, so any output is noise-like; that is expected.

Layout under the destination folder (see ``FOLDERS``):

- ``base/``: StableDiffusionPipeline (UNet 4 channels, 64 px native resolution, 8x VAE).
- ``inpaint/``: StableDiffusionInpaintPipeline (UNet 9 channels); vae, text_encoder, tokenizer
  and scheduler are byte-identical copies of base's.
- ``instruct/``: StableDiffusionInstructPix2PixPipeline (UNet 8 channels), shared parts as above.
- ``controlnet-{canny,lineart,scribble,depth}/``: ControlNetModel folders matching base's UNet.
- ``upscale-x4/``: StableDiffusionUpscalePipeline (UNet 7 channels, 4x VAE).
- ``upscale-latent-x2/``: StableDiffusionLatentUpscalePipeline (vae/text parts copied from base).
"""

from __future__ import annotations

import shutil
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import build_once

if TYPE_CHECKING:  # heavy imports stay lazy so importing this module is cheap
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

TINY_VERSION = "1"

#: Side of the square image the base UNet was "trained" at (sample_size 8 * VAE factor 8).
NATIVE_RESOLUTION = 64

CONTROLNET_KINDS = ("canny", "lineart", "scribble", "depth")
FOLDERS = (
    "base",
    "inpaint",
    "instruct",
    *(f"controlnet-{kind}" for kind in CONTROLNET_KINDS),
    "upscale-x4",
    "upscale-latent-x2",
)
#: Subfolders that inpaint/instruct/upscale-latent-x2 copy byte for byte from base.
SHARED_PARTS = ("vae", "text_encoder", "tokenizer")

_TEXT_HIDDEN = 32
_MAX_TOKENS = 77
_BPE_MERGES = 400

# Words the tiny BPE learns its merges from; any other text still tokenizes (byte fallback).
_BPE_CORPUS = """
a an the of and with in on at by for from to into over under near behind beside through
red orange yellow green blue purple pink white black gray grey brown golden silver dark light
bright pale vivid colorful
fox cat dog horse bird owl wolf bear lion tiger deer rabbit fish dragon castle house city
street forest tree trees flower flowers garden mountain mountains river lake sea ocean beach
sky cloud clouds sun moon star stars night day morning evening sunset sunrise rain snow storm
fog portrait landscape face woman man girl boy child person people robot car ship boat train
painting oil watercolor sketch drawing illustration photo photograph render digital art
artwork concept detailed highly intricate beautiful realistic photorealistic cinematic
lighting soft dramatic style trending artstation masterpiece quality best high resolution
sharp focus blurry background foreground canvas texture pencil ink charcoal anime cartoon
fantasy science fiction futuristic ancient old new small big large tiny giant standing
sitting running flying walking looking wearing holding smiling happy sad calm
""".split()


def _component_seed(seed: int, name: str) -> int:
    """A per-component seed, stable across processes (unlike ``hash``)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _manual_seed(seed: int, name: str) -> None:
    """Seed torch right before a component's random init so builds are reproducible."""
    import torch

    torch.manual_seed(_component_seed(seed, name))


# --------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table (what tokenizers' ByteLevel uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _train_bpe(words: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Learn CLIP-style merges (word-final symbols end in ``</w>``), ties broken by text."""
    corpus = {tuple(w[:-1]) + (w[-1] + "</w>",): 1 for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in corpus.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        corpus = {_merge_word(symbols, best): c for symbols, c in corpus.items()}
    return merges


def _merge_word(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Apply one merge to a word's symbols."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small real byte-level BPE laid out like CLIP's: bytes, bytes</w>, merges, specials."""
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges = _train_bpe(sorted(set(_BPE_CORPUS)), _BPE_MERGES)
    for left, right in merges:
        merged = left + right
        if merged not in tokens:
            tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def make_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer that really tokenizes English (``vocab=``/``merges=``, see ENVIRONMENT)."""
    from transformers import CLIPTokenizer

    vocab, merges = _bpe_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_TOKENS)


def make_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModel:
    """A 2-layer, 32-wide CLIP text model whose special ids match the tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_TOKENS,
        hidden_act="quick_gelu",
        projection_dim=_TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _manual_seed(seed, "text_encoder")
    return CLIPTextModel(config).eval()


# --------------------------------------------------------------------------- models


def make_vae(seed: int, levels: int = 4, scaling_factor: float = 0.18215) -> AutoencoderKL:
    """A VAE with a real 2**(levels-1) latent factor; 2-level test VAEs blow up at big sizes."""
    from diffusers import AutoencoderKL

    channels = [32] * levels
    _manual_seed(seed, f"vae-{levels}")
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=NATIVE_RESOLUTION,
        scaling_factor=scaling_factor,
    ).eval()


def make_sd_unet(seed: int, in_channels: int, name: str) -> UNet2DConditionModel:
    """An SD-1.x-shaped UNet; attention only at the lower level keeps large sizes cheap."""
    from diffusers import UNet2DConditionModel

    _manual_seed(seed, name)
    return UNet2DConditionModel(
        sample_size=NATIVE_RESOLUTION // 8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def make_controlnet(unet: UNet2DConditionModel, seed: int, kind: str) -> ControlNetModel:
    """A ControlNet copied from the UNet; zero convs get small random weights so it matters."""
    # Four conditioning levels = three stride-2 convs = the VAE's 8x factor.
    return controlnet_from_unet(unet, (16, 16, 32, 32), seed, f"controlnet-{kind}", std=0.05)


def controlnet_from_unet(
    unet: UNet2DConditionModel, embedding: tuple[int, ...], seed: int, name: str, std: float
) -> ControlNetModel:
    """`ControlNetModel.from_unet` zero-initialises its output convs, which would make every random
    ControlNet a no-op (and all of them identical): seed them with small random weights instead."""
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding)
    _manual_seed(seed, name)
    zero_convs = [
        controlnet.controlnet_cond_embedding.conv_out,
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
    ]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.normal_(0.0, std)
            conv.bias.normal_(0.0, std)
    return controlnet.eval()


def make_x4_unet(seed: int) -> UNet2DConditionModel:
    """The x4 upscaler's UNet (diffusers' dummy, but 1000 class embeds: noise_level <= 350)."""
    from diffusers import UNet2DConditionModel

    _manual_seed(seed, "upscale-x4/unet")
    return UNet2DConditionModel(
        sample_size=NATIVE_RESOLUTION,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32, 32),
        layers_per_block=1,
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        num_class_embeds=1000,
    ).eval()


def make_latent_x2_unet(seed: int) -> UNet2DConditionModel:
    """The latent x2 upscaler's K-diffusion UNet (from diffusers' fast-test dummy)."""
    from diffusers import UNet2DConditionModel

    _manual_seed(seed, "upscale-latent-x2/unet")
    return UNet2DConditionModel(
        act_fn="gelu",
        attention_head_dim=8,
        norm_num_groups=None,
        block_out_channels=[32, 32, 64, 64],  # K blocks need widening levels
        # 64 ones/zeros of noise-level embedding + the text encoder's pooled output.
        time_cond_proj_dim=128 + _TEXT_HIDDEN,
        conv_in_kernel=1,
        conv_out_kernel=1,
        cross_attention_dim=_TEXT_HIDDEN,
        down_block_types=(
            "KDownBlock2D",
            "KCrossAttnDownBlock2D",
            "KCrossAttnDownBlock2D",
            "KCrossAttnDownBlock2D",
        ),
        in_channels=8,
        mid_block_type=None,
        only_cross_attention=False,
        out_channels=5,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier",
        timestep_post_act="gelu",
        up_block_types=(
            "KCrossAttnUpBlock2D",
            "KCrossAttnUpBlock2D",
            "KCrossAttnUpBlock2D",
            "KUpBlock2D",
        ),
    ).eval()


# --------------------------------------------------------------------------- schedulers


def sd_scheduler() -> Any:
    """SD-1.5's default scheduler config."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )


def _x4_schedulers() -> tuple[Any, Any]:
    """(low_res_scheduler, scheduler) shaped like stabilityai's x4 upscaler."""
    from diffusers import DDIMScheduler, DDPMScheduler

    low_res = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    main = DDIMScheduler(
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return low_res, main


# --------------------------------------------------------------------------- folders


Progress = Callable[[str], None]

_README = """# Underpaint tiny test models (layout v{version}, seed {seed})

Random weights built offline by `underpaint.daemon.builders.tiny` for tests and demos. They are
complete diffusers folders loadable with `from_pretrained`, but nothing was trained: any output
is noise-like, and that is expected. Native resolution: {native} px.

Folders: {folders}.
"""


def _no_safety() -> dict[str, Any]:
    """Keyword arguments that leave the safety checker out of SD pipelines."""
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _copy_shared(base: Path, target: Path, parts: tuple[str, ...] = SHARED_PARTS) -> None:
    """Replace target's shared subfolders with byte-identical copies of base's."""
    for part in parts:
        shutil.rmtree(target / part, ignore_errors=True)
        shutil.copytree(base / part, target / part)


def _build_base(dest: Path, seed: int, say: Progress) -> dict[str, Any]:
    """base/: the text-to-image pipeline whose vae/text parts everything else shares."""
    from diffusers import StableDiffusionPipeline

    say("base: tokenizer + text encoder")
    tokenizer = make_tokenizer()
    text_encoder = make_text_encoder(tokenizer, seed)
    say("base: vae (4 levels, 8x)")
    vae = make_vae(seed)
    say("base: unet (4 channels)")
    unet = make_sd_unet(seed, 4, "base/unet")
    parts = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}
    pipe = StableDiffusionPipeline(**parts, scheduler=sd_scheduler(), **_no_safety())
    pipe.save_pretrained(dest / "base")
    return parts


def _build_variant(dest: Path, seed: int, parts: dict[str, Any], name: str, say: Progress) -> None:
    """inpaint/ (9-channel UNet) or instruct/ (8-channel UNet) beside a copy of base's parts."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionInstructPix2PixPipeline

    channels, cls = {
        "inpaint": (9, StableDiffusionInpaintPipeline),
        "instruct": (8, StableDiffusionInstructPix2PixPipeline),
    }[name]
    say(f"{name}: unet ({channels} channels)")
    unet = make_sd_unet(seed, channels, f"{name}/unet")
    shared = {k: parts[k] for k in SHARED_PARTS}
    pipe = cls(**shared, unet=unet, scheduler=sd_scheduler(), **_no_safety())
    pipe.save_pretrained(dest / name)
    _copy_shared(dest / "base", dest / name, (*SHARED_PARTS, "scheduler"))


def _build_controlnets(dest: Path, seed: int, unet: UNet2DConditionModel, say: Progress) -> None:
    """controlnet-*/: one differently seeded ControlNet per control kind."""
    for kind in CONTROLNET_KINDS:
        say(f"controlnet-{kind}")
        make_controlnet(unet, seed, kind).save_pretrained(dest / f"controlnet-{kind}")


def _build_upscale_x4(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    """upscale-x4/: image-space latents, 3-level (4x) VAE, noise-level class embeddings."""
    from diffusers import StableDiffusionUpscalePipeline

    say("upscale-x4: unet (7 channels) + vae (3 levels, 4x)")
    low_res_scheduler, scheduler = _x4_schedulers()
    pipe = StableDiffusionUpscalePipeline(
        vae=make_vae(seed, levels=3, scaling_factor=0.08333),
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=make_x4_unet(seed),
        low_res_scheduler=low_res_scheduler,
        scheduler=scheduler,
        max_noise_level=350,
    )
    pipe.save_pretrained(dest / "upscale-x4")
    _copy_shared(dest / "base", dest / "upscale-x4", ("text_encoder", "tokenizer"))


def _build_latent_x2(dest: Path, seed: int, parts: dict[str, Any], say: Progress) -> None:
    """upscale-latent-x2/: K-UNet on base's latents (needs >= 16x16 latents, i.e. 128 px)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline

    say("upscale-latent-x2: unet (k-diffusion)")
    shared = {k: parts[k] for k in SHARED_PARTS}
    scheduler = EulerDiscreteScheduler(prediction_type="sample")
    pipe = StableDiffusionLatentUpscalePipeline(**shared, unet=make_latent_x2_unet(seed), scheduler=scheduler)
    pipe.save_pretrained(dest / "upscale-latent-x2")
    _copy_shared(dest / "base", dest / "upscale-latent-x2")


def build_tiny_models(dest: Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Build every tiny folder under ``dest`` (created if missing) and return ``dest``."""
    say: Progress = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    parts = _build_base(dest, seed, say)
    for name in ("inpaint", "instruct"):
        _build_variant(dest, seed, parts, name, say)
    _build_controlnets(dest, seed, parts["unet"], say)
    _build_upscale_x4(dest, seed, parts, say)
    _build_latent_x2(dest, seed, parts, say)
    readme = _README.format(
        version=TINY_VERSION, seed=seed, native=NATIVE_RESOLUTION, folders=", ".join(FOLDERS)
    )
    (dest / "README.md").write_text(readme, encoding="utf-8")
    say("done")
    return dest


def ensure_tiny_models(root: Path) -> Path:
    """Return ``root/tiny-v{TINY_VERSION}``, building it atomically (temp dir + rename) if missing.

    Two processes may build at once: whoever renames first wins and the loser drops its copy.
    """
    return build_once(Path(root) / f"tiny-v{TINY_VERSION}", lambda tmp: build_tiny_models(tmp))
