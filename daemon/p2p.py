"""Prompt-to-Prompt (Hertz et al., 2022) on diffusers' attention-processor API: run a picture's seed
again with an edited prompt while the source prompt's attention keeps the composition.

How one edit runs. The source prompt and the edited prompt denoise side by side, a batch of two
pictures from one seed: each branch has a generator of its own seeded alike, so both start from the
same noise and draw the same noise later (ancestral samplers, VAE sampling, inpainting). The UNet is
called once per branch, source first. The source's attention layers keep their queries and keys; the
edited branch's layers then attend with the source's queries and keys wherever the edit says so.
That *is* the source's attention map (softmax(QKᵀ/√d) depends on nothing else), without ever
materialising it: scaled-dot-product attention stays the kernel, and an edit that changes nothing
gives the very same pixels.

- replace: both prompts have as many tokens; the edited values are attended with the source's map,
  token for token.
- refine: the edited tokens are aligned with the source's (longest common subsequence); aligned ones
  are attended with the source's map, new ones with their own.
- weights (reweight): a word's column of the map is scaled. P·diag(w)·V = P·(diag(w)·V), so the
  word's values are scaled instead.
- self-attention: the source's maps replace the edited branch's in layers of at most 32x32 queries (as
  in the paper), for the first `inject_self` share of the steps; cross-attention for `inject_cross`.
- local blend: the cross-attention maps of chosen words (in either prompt), gathered over layers and
  steps, mark where the pictures may differ; outside, the edited latents are set to the source's
  after every step, and the final pixels there are the source's.

Only the conditional half of classifier-free guidance is edited, as in the paper.

Why each branch is a UNet call of its own, each picture's VAE decode its own slice and each prompt its
own text-encoder call: batches of another size run through differently blocked kernels. Only this way
is the source branch exactly the source picture, and an edit injected for 0 % of the steps exactly the
plain run of the edited prompt.

Prompts are read as an ordinary job reads them (prompts.encode), so weighted phrases and long prompts
work and the source picture is reproduced. The edit works on token positions, window markers and padding
included: both prompts must fill as many 75-token windows, so that their embeddings are one batch.
`weights` is Prompt-to-Prompt's own per-word weighting of the attention maps, on top of any `(text:w)`
weights of the prompts' embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from . import prompts
from .errors import ErrorCode, RequestError
from .params import OpSpec

SOURCE, EDITED = 0, 1
#: Self-attention layers with more queries than this keep their own maps (the paper's limit).
SELF_MAX_QUERIES = 32 * 32
#: Share of the steps before the local blend starts (the first steps' maps are still vague).
BLEND_START = 0.2
#: Local blend: maps are gathered on the latent grid divided by this (16x16 for a 512 px picture).
BLEND_CELL = 4


def reword_spec(spec: OpSpec) -> OpSpec:
    """`reword`'s text params for a family that reads painters' syntax in CLIP windows (prompts.py):
    the edited prompt as the others, filling as many windows as the source's."""
    spec = prompts.text_spec(spec, prompts.WEIGHTED, prompts.MAX_TOKENS)
    edited = spec.params["new_prompt"]
    how = (
        f"(text:w) weighs a phrase (w 0 … 3); up to {prompts.MAX_TOKENS} tokens ({prompts.MAX_WINDOWS} x "
        f"{prompts.WINDOW}), in as many {prompts.WINDOW}-token windows as prompt (the edit lines the two "
        "prompts up token by token)"
    )
    changed = replace(
        edited, syntax=prompts.WEIGHTED, max_tokens=prompts.MAX_TOKENS, doc=f"{edited.doc}; {how}"
    )
    return spec.changed(add=[changed])


# -- what to do -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edit:
    """One reword, from its params."""

    source: str  # the source job's prompt, in painters' syntax
    edited: str  # the edited prompt
    negative: str
    kind: str  # one of params.EDIT_KINDS ("auto" until resolved)
    inject_cross: float
    inject_self: float
    weights: dict[str, float] = field(default_factory=dict)  # word or phrase -> attention weight
    blend: tuple[str, ...] = ()
    threshold: float = 0.3

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Edit:
        edited = params.get("new_prompt")
        return cls(
            source=params.get("prompt") or "",
            edited=params["prompt"] if edited is None else edited,
            negative=params.get("negative_prompt") or "",
            kind=params.get("edit") or "auto",
            inject_cross=params["inject_cross"],
            inject_self=params["inject_self"],
            weights=dict(params.get("weights") or {}),
            blend=tuple(params.get("blend") or ()),
            threshold=params.get("blend_threshold", 0.3),
        )


@dataclass
class Tokens:
    """Both prompts' token ids as their encoders read them (markers and padding included), and what the
    edit does at each position of the edited prompt."""

    source: list[int]
    edited: list[int]
    kind: str  # resolved: replace, refine or reweight
    mapper: torch.Tensor  # (L,) the source position each edited position is aligned with
    aligned: torch.Tensor  # (L,) 1 where it is aligned, 0 for new tokens
    weights: torch.Tensor  # (L,) attention weight of each edited position
    blend: tuple[list[int], list[int]]  # positions of the blend words in the source / edited prompt


@dataclass
class Own:
    """refine's new tokens: the edited branch's own conditional query and key, and their values."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor


def reading_ids(tokenizer: Any, text: str, negative: str) -> list[int]:
    """The token ids `text` is encoded from, window markers and padding included, the way
    prompts.encode reads it: plain text in one window through the tokenizer; weighted or longer text
    (or a weighted or longer negative prompt) through compel, window by window, with readings of the
    empty prompt after it up to the negative prompt's number of windows."""
    prompt, neg = prompts.parse(text), prompts.parse(negative)
    count = max(prompts.windows(tokenizer, prompt), prompts.windows(tokenizer, neg))
    if not prompt.weighted and not neg.weighted and count == 1:
        length = tokenizer.model_max_length
        ids = tokenizer(prompt.plain, padding="max_length", max_length=length, truncation=True).input_ids
        return list(ids)
    ids = _compel_ids(tokenizer, prompts._fragments(tokenizer, prompt))
    empty = _compel_ids(tokenizer, [("", 1.0)])
    while len(ids) < count * len(empty):
        ids += empty
    return ids


def _compel_ids(tokenizer: Any, pieces: list[tuple[str, float]]) -> list[int]:
    provider = prompts._provider(tokenizer)
    ids, _, _ = provider.get_token_ids_and_expand_weights(
        [t for t, _ in pieces], [w for _, w in pieces], device="cpu"
    )
    return [int(i) for i in ids]


def check_windows(tokenizer: Any, edit: Edit) -> None:
    """The edited prompt's syntax and length; and it must fill as many CLIP windows as the source
    prompt, whose positions it is lined up with (their embeddings are one batch)."""
    counts = {}
    for path, text in (("params.prompt", edit.source), ("params.new_prompt", edit.edited)):
        prompt = prompts.parse(text, path)
        counts[path] = prompts.windows(tokenizer, prompt)
        if counts[path] > prompts.MAX_WINDOWS:
            raise RequestError(
                ErrorCode.OUT_OF_RANGE,
                f"{path} is {prompts.tokens(tokenizer, prompt.plain)} tokens long and needs {counts[path]} "
                f"windows of {prompts.WINDOW} tokens; at most {prompts.MAX_WINDOWS} are read "
                f"({prompts.MAX_TOKENS} tokens). Shorten it: nothing is cut silently",
                path,
            )
    source, edited = counts.values()
    if edited != source:
        raise RequestError(
            ErrorCode.INVALID_VALUE,
            f"params.new_prompt fills {edited} window(s) of {prompts.WINDOW} tokens and params.prompt "
            f"{source}: reword lines the two prompts up token by token, so both must fill as many "
            "windows (windows end at word boundaries)",
            "params.new_prompt",
        )
    prompts.parse(edit.negative, "params.negative_prompt")


def plan(tokenizer: Any, edit: Edit) -> Tokens:
    """Resolve the edit against the tokenizer: its kind, the alignment, the weights and blend words.
    Raises RequestError (naming the param) for an edit the prompts do not allow."""
    check_windows(tokenizer, edit)
    source = reading_ids(tokenizer, edit.source, edit.negative)
    edited = reading_ids(tokenizer, edit.edited, edit.negative)
    kind = _kind(edit, tokenizer, source, edited)
    if kind == "refine":
        mapper, aligned = align(source, edited)
    else:
        mapper, aligned = torch.arange(len(edited)), torch.ones(len(edited))
    weights = torch.ones(len(edited))
    for word, weight in edit.weights.items():
        spots = positions(tokenizer, edited, word)
        if not spots:
            raise RequestError(
                ErrorCode.INVALID_VALUE,
                f"params.weights: {word!r} is not in the edited prompt (new_prompt), so it cannot be weighed",
                "params.weights",
            )
        weights[spots] = weight
    blend: tuple[list[int], list[int]] = ([], [])
    for word in edit.blend:
        found = positions(tokenizer, source, word), positions(tokenizer, edited, word)
        if not any(found):
            raise RequestError(
                ErrorCode.INVALID_VALUE,
                f"params.blend: {word!r} is in neither prompt, so it marks no region",
                "params.blend",
            )
        blend[SOURCE].extend(found[SOURCE])
        blend[EDITED].extend(found[EDITED])
    return Tokens(source, edited, kind, mapper, aligned, weights, blend)


def _words(tokenizer: Any, ids: list[int]) -> int:
    """How many of `ids` are text (not window markers or padding)."""
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sum(1 for i in ids if i not in special)


def _kind(edit: Edit, tokenizer: Any, source: list[int], edited: list[int]) -> str:
    """`auto`: reweight when the words are the same, replace when only words of as many tokens were
    swapped, refine otherwise. An explicit kind must fit the prompts."""
    same_words = prompts.parse(edit.source).plain == prompts.parse(edit.edited).plain
    n, m = _words(tokenizer, source), _words(tokenizer, edited)
    if edit.kind == "auto":
        return "reweight" if same_words else "replace" if n == m else "refine"
    if edit.kind == "reweight" and not same_words:
        raise RequestError(
            ErrorCode.INVALID_VALUE,
            "params.edit is 'reweight', which keeps the words and changes only their weights, but "
            "new_prompt has other words than prompt; use 'replace', 'refine' or 'auto'",
            "params.edit",
        )
    if edit.kind == "replace" and n != m:
        raise RequestError(
            ErrorCode.INVALID_VALUE,
            f"params.edit is 'replace', which swaps words token for token, but prompt has {n} tokens and "
            f"new_prompt {m}; use 'refine' (or 'auto') for edits that add or remove words",
            "params.edit",
        )
    return edit.kind


def positions(tokenizer: Any, ids: list[int], phrase: str) -> list[int]:
    """Every position of `ids` inside an occurrence of `phrase`'s tokens."""
    want = list(tokenizer(prompts.plain(phrase), add_special_tokens=False).input_ids)
    if not want:
        return []
    hits = [i for i in range(len(ids) - len(want) + 1) if ids[i : i + len(want)] == want]
    return sorted({i + k for i in hits for k in range(len(want))})


def align(source: list[int], edited: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token alignment for refine: for each edited position, the source position it is paired with
    (mapper) and whether it is paired (aligned; new tokens are not). A longest common subsequence of
    the two id lists, markers and padding included, pairs them up in order."""
    n, m = len(source), len(edited)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = (
                table[i + 1][j + 1] + 1 if source[i] == edited[j] else max(table[i + 1][j], table[i][j + 1])
            )
    mapper, aligned = torch.arange(m), torch.zeros(m)
    i = j = 0
    while i < n and j < m:
        if source[i] == edited[j]:
            mapper[j], aligned[j] = i, 1
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return mapper, aligned


# -- the run --------------------------------------------------------------------------------------------
class Controller:
    """One edit's state while its pipeline runs: which branch and step the UNet is at, the source's
    queries and keys of the current step, and the blend maps."""

    def __init__(self, edit: Edit, tokens: Tokens, pipe: Any, guided: bool) -> None:
        self.edit, self.tokens, self.pipe = edit, tokens, pipe
        self.cond = 1 if guided else 0  # index of the conditional picture in a branch's batch
        self.branch = SOURCE
        self.step = 0  # UNet calls (per branch) so far: PNDM calls once more than its steps
        self.latent: tuple[int, int] = (1, 1)
        self.kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.maps: list[torch.Tensor | None] = [None, None]
        self.region: torch.Tensor | None = None  # latent-size bool mask of the last blend

    # -- when ------------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return max(1, int(getattr(self.pipe, "_num_timesteps", 0) or 1))

    def injecting(self, cross: bool) -> bool:
        share = self.edit.inject_cross if cross else self.edit.inject_self
        return self.step < int(self.total * share)

    def wants(self, cross: bool, queries: int) -> bool:
        """Whether an attention layer needs the edit's processor now (else it runs its own)."""
        if cross:
            return self.injecting(True) or bool(self.edit.blend)
        return queries <= SELF_MAX_QUERIES and self.injecting(False)

    # -- what ------------------------------------------------------------------------------------
    def edit_projections(
        self, name: str, attn: Any, cross: bool, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Own | None]:
        """The layer's (batch, tokens, width) query, key and value as the edit wants them attended,
        plus refine's new tokens (attended with the edited branch's own map), if any."""
        c = self.cond
        if cross and self.edit.blend:
            self._gather(attn, query[c:], key[c:])
        if not self.injecting(cross):
            return query, key, value, None
        if self.branch == SOURCE:
            self.kept[name] = (query[c:], key[c:])
            return query, key, value, None
        kept_query, kept_key = self.kept.pop(name)
        mixed_query, mixed_key = torch.cat([query[:c], kept_query]), torch.cat([key[:c], kept_key])
        if not cross:
            return mixed_query, mixed_key, value, None
        tokens = self.tokens
        weighted = value[c:] * tokens.weights.to(value)[:, None]
        if tokens.kind != "refine":
            return mixed_query, mixed_key, torch.cat([value[:c], weighted]), None
        aligned = tokens.aligned.to(value)[:, None]
        mapper = tokens.mapper.to(value.device)
        to_source = torch.zeros_like(weighted).index_add_(1, mapper, weighted * aligned)
        own = Own(query[c:], key[c:], weighted * (1 - aligned))
        return mixed_query, mixed_key, torch.cat([value[:c], to_source]), own

    def _gather(self, attn: Any, query: torch.Tensor, key: torch.Tensor) -> None:
        """Add this layer's map of the blend words (mean over heads) to the branch's sum, on the
        blend grid."""
        spots = self.tokens.blend[self.branch]
        if not spots:
            return
        q, k = _heads(attn, query), _heads(attn, key)
        with torch.no_grad():
            probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
            words = probs[..., spots].sum(-1).mean(1)  # (1, queries)
            grid = _layer_grid(words.shape[-1], self.latent)
            small = F.interpolate(
                words.view(1, 1, *grid).float(), size=_blend_grid(self.latent), mode="bilinear"
            )
        total = self.maps[self.branch]
        self.maps[self.branch] = small if total is None else total + small

    def blend(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """callback_on_step_end: outside the blend words' region the edited latents become the
        source's (from BLEND_START of the steps on)."""
        latents = kwargs["latents"]
        if i < int(BLEND_START * self.total) or all(m is None for m in self.maps):
            return {"latents": latents}
        mask = self._mask(latents.shape[-2:])
        self.region = mask
        source, edited = latents[SOURCE : SOURCE + 1], latents[EDITED : EDITED + 1]
        return {"latents": torch.cat([source, torch.where(mask.to(latents.device), edited, source)])}

    def _mask(self, size: tuple[int, int]) -> torch.Tensor:
        """Where the pictures may differ: each prompt's word map, max-pooled over neighbouring cells
        (3x3 on a 16x16 grid, as in the paper), scaled to the latents, stretched to 0 … 1 and cut at
        the threshold; both prompts' areas together."""
        mask = torch.zeros(1, 1, *size, dtype=torch.bool)
        for total in self.maps:
            if total is None:
                continue
            reach = round(min(total.shape[-2:]) / 16)
            pooled = F.max_pool2d(total, 2 * reach + 1, stride=1, padding=reach)
            up = F.interpolate(pooled, size=tuple(size), mode="nearest")
            low, high = up.amin(), up.amax()
            if high > low:
                mask |= ((up - low) / (high - low) > self.edit.threshold).cpu()
        return mask

    # -- the UNet's two calls -----------------------------------------------------------------------
    def split(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """`forward` of the UNet, called once per branch on its half of the pipeline's batch (the
        batch is [source, edited] repeated for each guidance half)."""

        def split_forward(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            n = sample.shape[0]
            self.latent = (int(sample.shape[-2]), int(sample.shape[-1]))
            outs = []
            for branch in (SOURCE, EDITED):
                self.branch = branch
                index = torch.arange(branch, n, 2, device=sample.device)
                picked = _take((sample, *args), index, n)
                outs.append(forward(*picked, **_take(kwargs, index, n)))
            self.step += 1
            self.kept.clear()
            return _interleave(outs, n)

        return split_forward


class RewordProcessor:
    """Attention computed as diffusers' AttnProcessor2_0 computes it, with the edit's say over its
    queries, keys and values. Layers and steps the edit leaves alone run the UNet's own processor."""

    def __init__(self, controller: Controller, name: str, original: Any) -> None:
        self.controller, self.name, self.original = controller, name, original

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        cross = encoder_hidden_states is not None
        queries = hidden_states.shape[1] if hidden_states.ndim == 3 else math.prod(hidden_states.shape[2:])
        if not self.controller.wants(cross, queries):
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        return self.attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def attend(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> torch.Tensor:
        """AttnProcessor2_0, step for step (so an unedited layer gives the same bits), with the
        controller's edit between the projections and the attention."""
        cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        query, key, value, own = self.controller.edit_projections(self.name, attn, cross, query, key, value)
        hidden_states = _attention(attn, query, key, value, attention_mask)
        if own is not None:  # refine: the new tokens, with the edited branch's own map
            c = self.controller.cond
            hidden_states[c:] = hidden_states[c:] + _attention(attn, own.query, own.key, own.value, None)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# -- attention helpers ---------------------------------------------------------------------------------
def _heads(attn: Any, tensor: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, width) -> (batch, heads, tokens, width / heads), as AttnProcessor2_0 splits."""
    head_dim = tensor.shape[-1] // attn.heads
    return tensor.view(tensor.shape[0], -1, attn.heads, head_dim).transpose(1, 2)


def _attention(
    attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Multi-head scaled-dot-product attention of projected tensors, back to (batch, tokens, width)."""
    batch_size, head_dim = query.shape[0], key.shape[-1] // attn.heads
    query, key, value = _heads(attn, query), _heads(attn, key), _heads(attn, value)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    hidden = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
    hidden = hidden.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
    return hidden.to(query.dtype)


def _layer_grid(queries: int, latent: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) of a layer with `queries` positions: the latent grid halved as the UNet
    halves it (rounding up), as often as it takes."""
    h, w = latent
    while h * w > queries and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != queries:
        raise ValueError(f"an attention layer of {queries} queries does not fit a {latent} latent grid")
    return h, w


def _blend_grid(latent: tuple[int, int]) -> tuple[int, int]:
    """The grid blend maps are gathered on: the latent grid / BLEND_CELL, at least 4 cells a side
    (tiny models' latents are only 8 cells wide)."""
    return tuple(max(math.ceil(side / BLEND_CELL), min(side, 4)) for side in latent)  # type: ignore[return-value]


def _take(obj: Any, index: torch.Tensor, n: int) -> Any:
    """One branch's rows of every batch-sized tensor in `obj` (tuples, lists and dicts searched)."""
    if isinstance(obj, torch.Tensor):
        return obj.index_select(0, index) if obj.ndim > 0 and obj.shape[0] == n else obj
    if isinstance(obj, dict):
        return {k: _take(v, index, n) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_take(v, index, n) for v in obj)
    return obj


def _interleave(outs: list[Any], n: int) -> Any:
    """The UNet's outputs of both branches back in the pipeline's batch order."""

    def zip_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([a, b], dim=1).reshape(n, *a.shape[1:])

    first, second = outs
    if isinstance(first, tuple):
        return tuple(zip_rows(a, b) for a, b in zip(first, second, strict=True))
    return type(first)(sample=zip_rows(first.sample, second.sample))


# -- installing and running --------------------------------------------------------------------------
@contextmanager
def installed(pipe: Any, controller: Controller) -> Iterator[None]:
    """The edit's attention processors and split UNet calls, plus per-picture VAE slices, for one
    run; everything is put back afterwards, also when the run fails or is cancelled, so ordinary jobs
    run with the UNet's own (fast) attention."""
    unet, vae = pipe.unet, pipe.vae
    originals = dict(unet.attn_processors)
    # set_attn_processor empties the dict it is given: it gets copies.
    unet.set_attn_processor({name: RewordProcessor(controller, name, p) for name, p in originals.items()})
    own_forward = unet.__dict__.get("forward")
    unet.forward = controller.split(unet.forward)
    slicing = vae.__dict__.get("use_slicing")
    vae.use_slicing = True
    try:
        yield
    finally:
        if own_forward is None:
            unet.__dict__.pop("forward", None)
        else:
            unet.forward = own_forward
        unet.set_attn_processor(dict(originals))
        if slicing is None:
            vae.__dict__.pop("use_slicing", None)
        else:
            vae.use_slicing = slicing


def guided(pipe: Any, guidance_scale: float) -> bool:
    """Whether the pipeline will run classifier-free guidance (its own rule)."""
    return guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None


def readings(pipe: Any, edit: Edit, cfg: bool) -> tuple[dict[str, torch.Tensor], Tokens]:
    """Both prompts' embeddings as one batch [source, edited] (each read on its own, exactly as an
    ordinary job reads it), and the token plan."""
    tokens = plan(pipe.tokenizer, edit)
    with torch.no_grad():
        each = [
            _embeddings(pipe, prompts.encode(pipe, text, edit.negative), cfg)
            for text in (edit.source, edit.edited)
        ]
    embeds = {k: torch.cat([each[0][k], each[1][k]]) for k, v in each[0].items() if v is not None}
    return embeds, tokens


def _embeddings(pipe: Any, args: dict[str, Any], cfg: bool) -> dict[str, Any]:
    """The pipeline's own encode_prompt of text arguments (strings or compel's embeddings)."""
    device = pipe._execution_device
    names = (
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    )
    common = {
        "device": device,
        "num_images_per_prompt": 1,
        "do_classifier_free_guidance": cfg,
        "prompt": args.get("prompt"),
        "negative_prompt": args.get("negative_prompt"),
        "prompt_embeds": args.get("prompt_embeds"),
        "negative_prompt_embeds": args.get("negative_prompt_embeds"),
    }
    if hasattr(pipe, "text_encoder_2"):  # SDXL: pooled embeddings too
        common |= {k: args.get(k) for k in names[2:]}
        return dict(zip(names, pipe.encode_prompt(**common), strict=True))
    return dict(zip(names[:2], pipe.encode_prompt(**common), strict=True))


@dataclass
class Outcome:
    """What the pipeline made of both branches."""

    images: list[Any]  # [source, edited]: pictures, or latents (one row each) for output_type="latent"
    generators: list[torch.Generator]  # each branch's, where its run left it
    region: torch.Tensor | None  # latent-size bool mask of the local blend; None without blend


def run(
    gen: Any, pipe: Any, edit: Edit, seed: int, call: dict[str, Any], output_type: str = "pil"
) -> Outcome:
    """Run the edit on `pipe` (a Stable Diffusion style pipeline, its job's scheduler set) for one seed.
    `call`: the op's own arguments (sizes; for inpaint the image and mask, given once: both branches
    get them)."""
    params = gen.params
    cfg = guided(pipe, params["guidance_scale"])
    key = f"reword:{id(pipe.text_encoder)}:{cfg}"
    embeds, tokens = gen.once(key, lambda: readings(pipe, edit, cfg))
    controller = Controller(edit, tokens, pipe, cfg)
    generators = [torch.Generator("cpu").manual_seed(seed) for _ in (SOURCE, EDITED)]
    args: dict[str, Any] = {
        **embeds,
        "num_inference_steps": params["steps"],
        "guidance_scale": params["guidance_scale"],
        "num_images_per_prompt": 1,
        "generator": generators,
        "output_type": output_type,
    }
    args |= {k: [v, v] if isinstance(v, Image.Image) else v for k, v in call.items()}
    if edit.blend:
        args |= {"callback_on_step_end": controller.blend, "callback_on_step_end_tensor_inputs": ["latents"]}
    with installed(pipe, controller):
        images = pipe(**args).images
    pictures = list(images) if output_type != "latent" else [images[SOURCE : SOURCE + 1], images[EDITED:]]
    return Outcome(pictures, generators, controller.region)


@dataclass
class Pair:
    """One seed's reword: the source picture again, the edited one, and where the blend let the
    edit change pixels (L mask at the pictures' size; None: everywhere)."""

    source: Image.Image | None
    edited: Image.Image
    region: Image.Image | None


def region_image(region: torch.Tensor | None, size: tuple[int, int]) -> Image.Image | None:
    """The blend's latent-size mask as an 8-bit mask of the picture's size (each latent cell a block)."""
    if region is None:
        return None
    cells = (region[0, 0].to(torch.uint8) * 255).numpy()
    return Image.fromarray(cells, "L").resize(size, Image.NEAREST)


def pair(outcome: Outcome) -> Pair:
    """A decoded outcome as a Pair."""
    source, edited = outcome.images
    return Pair(source, edited, region_image(outcome.region, edited.size))
