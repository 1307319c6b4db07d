"""Parts every tiny family builder shares: seeding, a real (small) CLIP BPE tokenizer and text
encoder, an 8x VAE, SD's scheduler, and helpers for folders that share subfolders byte for byte.

Heavy imports stay inside functions, so importing a builder module is cheap.
"""

from __future__ import annotations

import shutil
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

Progress = Callable[[str], None]

#: Side of the square image the tiny SD-style UNets were "trained" at (sample_size 8 * VAE factor 8).
NATIVE_RESOLUTION = 64
#: Subfolders that variant folders copy byte for byte from base.
SHARED_PARTS = ("vae", "text_encoder", "tokenizer")

TEXT_HIDDEN = 32
MAX_TOKENS = 77
_BPE_MERGES = 400

# Words the tiny BPE learns its merges from; any other text still tokenizes (byte fallback).
CORPUS_WORDS = """
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


def component_seed(seed: int, name: str) -> int:
    """A per-component seed, stable across processes (unlike ``hash``)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def manual_seed(seed: int, name: str) -> None:
    """Seed torch right before a component's random init so builds are reproducible."""
    import torch

    torch.manual_seed(component_seed(seed, name))


def bytes_to_unicode() -> dict[int, str]:
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
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges = _train_bpe(sorted(set(CORPUS_WORDS)), _BPE_MERGES)
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
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def make_openclip_tokenizer() -> CLIPTokenizer:
    """The same tiny BPE, padding with "!" like OpenCLIP's tokenizers (SD 2.x, SDXL's second)."""
    tokenizer = make_tokenizer()
    tokenizer.pad_token = "!"
    return tokenizer


def clip_text_config(
    tokenizer: CLIPTokenizer,
    hidden_size: int = TEXT_HIDDEN,
    intermediate_size: int = 37,
    hidden_act: str = "quick_gelu",
    projection_dim: int | None = None,
) -> Any:
    """A 2-layer CLIP text config whose special ids match the tokenizer; families pick the width and
    activation of the encoder they imitate (OpenAI CLIP: quick_gelu, OpenCLIP: gelu)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        hidden_act=hidden_act,
        projection_dim=projection_dim or hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModel:
    """A 2-layer, 32-wide CLIP text model whose special ids match the tokenizer."""
    from transformers import CLIPTextModel

    manual_seed(seed, "text_encoder")
    return CLIPTextModel(clip_text_config(tokenizer)).eval()


def make_vae(seed: int, levels: int = 4, scaling_factor: float = 0.18215) -> AutoencoderKL:
    """A VAE with a real 2**(levels-1) latent factor; 2-level test VAEs blow up at big sizes."""
    from diffusers import AutoencoderKL

    channels = [32] * levels
    manual_seed(seed, f"vae-{levels}")
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


def controlnet_from_unet(
    unet: UNet2DConditionModel, embedding: tuple[int, ...], seed: int, name: str, std: float
) -> ControlNetModel:
    """`ControlNetModel.from_unet` zero-initialises its output convs, which would make every random
    ControlNet a no-op (and all of them identical): seed them with small random weights instead."""
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding)
    manual_seed(seed, name)
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


def keep_hint_scale(controlnet: ControlNetModel, seed: int, name: str) -> ControlNetModel:
    """Re-initialise a random ControlNet's hint encoder so its signal keeps its scale through the
    layers: with torch's default init a control map's contribution shrinks about 1000x on the way in,
    so two different control maps gave almost the same picture and no test could tell whether the map
    was used."""
    import torch

    hint = controlnet.controlnet_cond_embedding
    manual_seed(seed, f"{name}/hint")
    with torch.no_grad():
        for conv in (hint.conv_in, *hint.blocks, hint.conv_out):
            fan_in = conv.weight[0].numel()
            conv.weight.normal_(0.0, 2.0 * (2.0 / fan_in) ** 0.5)
            conv.bias.zero_()
    return controlnet


#: How much larger the tiny UNets' cross-attention logits are than at their random init.
ATTENTION_SHARPNESS = 8.0
#: Side of the square picture the tiny ranking CLIP looks at (224 for openai/clip-vit-large-patch14).
CLIP_IMAGE_SIZE = 32


def sharpen_cross_attention(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Trained models attend sharply: a word's attention map points at the part of the picture that
    shows it. At a random init the logits are tiny and every map is nearly uniform, so what works on
    maps (Prompt-to-Prompt's injection, its local blend) would have nothing to act on. The keys of
    every cross-attention layer are scaled up: the maps peak where they already pointed."""
    import torch

    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_k.weight.mul_(ATTENTION_SHARPNESS)
    return unet


def build_clip(dest: Path, seed: int) -> None:
    """A tiny CLIP (text and vision towers projecting into one embedding space) laid out like
    openai/clip-vit-large-patch14: model, tokenizer and image processor in one folder. Presets rank
    their pictures with it (the `clip` role)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig

    tokenizer = make_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=4,
        hidden_act="quick_gelu",
    )
    config = CLIPConfig(
        text_config=clip_text_config(tokenizer).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=TEXT_HIDDEN,
    )
    manual_seed(seed, "clip")
    CLIPModel(config).eval().save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    size = CLIP_IMAGE_SIZE
    CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(dest)


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


def no_safety() -> dict[str, Any]:
    """Keyword arguments that leave the safety checker out of SD pipelines."""
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def copy_shared(base: Path, target: Path, parts: tuple[str, ...] = SHARED_PARTS) -> None:
    """Replace target's shared subfolders with byte-identical copies of base's."""
    for part in parts:
        shutil.rmtree(target / part, ignore_errors=True)
        shutil.copytree(base / part, target / part)
