"""Prompts as painters write them: `(text:w)` weights, `(text)` emphasis, escaped parentheses, and
prompts longer than one 77-token CLIP window. The same syntax for every client (PROTOCOL.md, "Prompt
syntax"); each family says in its op specs whether it can honour weights (`syntax`) and how many
tokens it reads (`max_tokens`), and refuses what it cannot honour before the job is accepted.

Parsing is ours (painters' syntax is not compel's); the embeddings are compel's. The parsed prompt goes
to compel as its own parsed structure (a FlattenedPrompt of (text, weight) fragments), not as a string
in compel's syntax: compel reads `word-` and `word+` as weights and keeps the backslash of `\\-`, so no
escaping carries every painter's text through its string parser unchanged.

A prompt without weights that fits one window goes to diffusers as plain text, exactly as before;
anything else goes through compel, which encodes each 75-token window on its own and lines the windows
up one after the other (the way the established tools combine them).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import FULLSIZE_PREFIX, TINY_PREFIX, Preset, data_home
from .errors import ErrorCode, RequestError
from .params import OpSpec

if TYPE_CHECKING:
    from .families.base import Generation
    from .request import OpRequest

log = logging.getLogger("underpaint.prompts")

# -- the syntax -------------------------------------------------------------------------------------
MAX_WEIGHT = 3.0
MAX_NESTING = 32  # groups inside groups: far beyond any use (weights multiply), and parsing stays flat
EMPHASIS = 1.1  # `(text)` without a number
_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)\Z")
_WEIGHT_LIKE = re.compile(r"[-+.\d]\S*\Z")  # one word that starts like a number


class PromptSyntaxError(RequestError):
    """Malformed prompt syntax: an `invalid_value` whose error map also carries `position`, the
    0-based character index into the text, so editors can put the cursor there."""

    def __init__(self, field: str, position: int, message: str) -> None:
        super().__init__(ErrorCode.INVALID_VALUE, f"{field}: {message}", field)
        self.position = position

    def to_message(self) -> dict[str, Any]:
        return super().to_message() | {"position": self.position}


@dataclass(frozen=True)
class Run:
    """A stretch of text with one weight."""

    text: str
    weight: float


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt: its runs (neighbours of equal weight merged) and where each group opened."""

    source: str
    runs: tuple[Run, ...]
    groups: tuple[int, ...]  # positions of every group's '('

    @property
    def plain(self) -> str:
        """The text without the syntax: what a family that cannot weigh phrases reads."""
        return "".join(run.text for run in self.runs)

    @property
    def weighted(self) -> bool:
        return any(run.weight != 1.0 for run in self.runs)

    def fragments(self) -> list[tuple[str, float]]:
        """(text, weight) pairs for compel; never empty (compel needs one fragment, "" if nothing)."""
        return [(run.text, run.weight) for run in self.runs] or [("", 1.0)]


@dataclass
class _Group:
    start: int
    parts: list[Any]  # (char, position) pairs and nested _Groups
    weight: float = EMPHASIS


def parse(text: str, field: str = "params.prompt") -> Prompt:
    """Parse painters' prompt syntax; PromptSyntaxError (naming `field` and the position) if malformed.

    `(text:w)` multiplies the weight of `text` by w (0 … 3), `(text)` by 1.1, nesting multiplies;
    `\\(`, `\\)` and `\\\\` are literal; any other backslash is itself. A colon followed by words rather
    than a number is text: `(style: ink)` is `style: ink` at 1.1.
    """
    stack = [_Group(-1, [])]
    groups: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "()\\":
            stack[-1].parts.append((text[i + 1], i + 1))
            i += 2
            continue
        if char == "(":
            if len(stack) > MAX_NESTING:
                raise PromptSyntaxError(
                    field, i, f"'(' at character {i} nests more than {MAX_NESTING} groups deep"
                )
            stack.append(_Group(i, []))
            groups.append(i)
        elif char == ")":
            if len(stack) == 1:
                raise PromptSyntaxError(
                    field, i, f"')' at character {i} closes no '('; write '\\)' for a literal parenthesis"
                )
            group = stack.pop()
            _close(group, i, field)
            stack[-1].parts.append(group)
        else:
            stack[-1].parts.append((char, i))
        i += 1
    if len(stack) > 1:
        start = stack[-1].start
        raise PromptSyntaxError(
            field,
            start,
            f"'(' at character {start} is never closed: expected ')' (or write '\\(' for a literal one)",
        )
    runs = _merge(_flatten(stack[0], 1.0))
    return Prompt(text, tuple(runs), tuple(groups))


def _close(group: _Group, end: int, field: str) -> None:
    """Read the group's `:w` and check that something is left to weigh. After the group's last colon,
    one word that starts like a number (a digit, a sign or a point) is its weight, and must be one;
    anything else there (`(style: ink)`, `(at 12:30 pm)`) is text."""
    tail_start = len(group.parts)
    while tail_start > 0 and isinstance(group.parts[tail_start - 1], tuple):
        tail_start -= 1
    tail = group.parts[tail_start:]
    colon = next((k for k in range(len(tail) - 1, -1, -1) if tail[k][0] == ":"), None)
    if colon is not None:
        after = [(c, at) for c, at in tail[colon + 1 :] if not c.isspace()]
        number = "".join(c for c, _ in tail[colon + 1 :]).strip()
        if not number:
            raise PromptSyntaxError(
                field, end, f"expected a weight (a number 0 … 3) before ')' at character {end}"
            )
        if _WEIGHT_LIKE.match(number):
            group.weight = _weight(number, after[0][1], field)
            del group.parts[tail_start + colon :]
    if not any(isinstance(p, _Group) or not p[0].isspace() for p in group.parts):
        raise PromptSyntaxError(
            field, group.start, f"the group '(' at character {group.start} is empty: nothing to weigh"
        )


def _weight(number: str, position: int, field: str) -> float:
    """The value of a group's weight, 0 … 3."""
    if not _NUMBER.match(number.lstrip("+-")):
        raise PromptSyntaxError(
            field, position, f"weight {number!r} at character {position} is not a number: expected e.g. 1.3"
        )
    value = float(number)
    if not 0 <= value <= MAX_WEIGHT:
        raise PromptSyntaxError(
            field, position, f"weight {number} at character {position} is out of range: expected 0 … 3"
        )
    return value


def _flatten(group: _Group, weight: float) -> Iterator[Run]:
    for part in group.parts:
        if isinstance(part, _Group):
            yield from _flatten(part, weight * part.weight)
        else:
            yield Run(part[0], weight)


def _merge(runs: Iterator[Run]) -> list[Run]:
    merged: list[Run] = []
    for run in runs:
        if merged and merged[-1].weight == run.weight:
            merged[-1] = replace(merged[-1], text=merged[-1].text + run.text)
        else:
            merged.append(run)
    return merged


def plain(text: str | None) -> str:
    """The text a plain-syntax family's pipeline reads (escapes resolved; validated before)."""
    return parse(text or "").plain


# -- what a family offers ---------------------------------------------------------------------------
WEIGHTED, PLAIN = "weighted", "plain"
WINDOW = 75  # tokens of one CLIP window between its start and end markers
MAX_WINDOWS = 3
MAX_TOKENS = MAX_WINDOWS * WINDOW
TEXT_PARAMS = ("prompt", "negative_prompt", "instruction")


def text_spec(spec: OpSpec, syntax: str, max_tokens: int, note: str = "") -> OpSpec:
    """`spec` with its text parameters (and mix items' prompts) saying which syntax they take and how
    many tokens."""
    if syntax == WEIGHTED:
        how = f"(text:w) weighs a phrase (w 0 … 3); up to {max_tokens} tokens ({MAX_WINDOWS} x {WINDOW})"
    else:
        how = f"plain text, no weights (write \\( \\) for parentheses); up to {max_tokens} tokens"
    changed = [
        replace(
            spec.params[name],
            syntax=syntax,
            max_tokens=max_tokens,
            doc=f"{spec.params[name].doc}; {how}{note}",
        )
        for name in (*TEXT_PARAMS, "items")
        if name in spec.params
    ]
    return spec.changed(add=changed) if changed else spec


def texts(params: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, text) of every prompt a request carries."""
    found = [(f"params.{name}", params[name]) for name in TEXT_PARAMS if isinstance(params.get(name), str)]
    for i, item in enumerate(params.get("items") or []):
        if isinstance(item.get("prompt"), str):
            found.append((f"params.items.{i}.prompt", item["prompt"]))
    return found


# -- tokenizers for validation ----------------------------------------------------------------------
#: Resolves a preset role's source to what from_pretrained reads (the model manager's own resolver when
#: the daemon has one; see use_models).
_resolve: Callable[[Preset, str], str] | None = None
_models_root: Path | None = None  # where that manager builds the tiny and full-size models


def use_models(models: Any) -> None:
    """Resolve tiny sources the way this daemon's model manager does (its folder)."""
    global _resolve, _models_root
    _resolve, _models_root = models._source, Path(models.tiny_root)


@dataclass(frozen=True)
class Reader:
    """A tokenizer a request's text will meet: the `subfolder` of the preset's `role`, and how many
    tokens it reads (`limit` = None: CLIP windows through compel, up to MAX_WINDOWS)."""

    role: str
    subfolder: str = "tokenizer"
    limit: int | None = None
    name: str = "CLIP"


def _source(preset: Preset, role: str) -> str | None:
    """Where the tokenizer files of `role` live, or None when they cannot be read without loading or
    building the model (a single file without a configs folder, the full-size random models not built
    yet): the job then counts the windows when it runs."""
    from .families.base import is_single_file

    source = preset.sources[role]
    if is_single_file(source):
        return preset.single_file_config
    root = _models_root or data_home() / "models"
    if source.startswith(FULLSIZE_PREFIX):  # gigabytes: never built just to count tokens
        from .builders.fullsize import FULLSIZE_VERSION

        folder = root / f"fullsize-v{FULLSIZE_VERSION}" / source[len(FULLSIZE_PREFIX) :]
        return str(folder) if folder.is_dir() else None
    if _resolve is not None:
        return _resolve(preset, role)
    if source.startswith(TINY_PREFIX):  # built in seconds, as its first load would
        from .builders.tiny import ensure_tiny

        family, _, folder = source[len(TINY_PREFIX) :].partition("/")
        return str(ensure_tiny(root, family) / folder)
    return source


@functools.lru_cache(maxsize=16)
def _tokenizer(source: str, subfolder: str) -> Any:
    """Only the tokenizer files (kilobytes to a few MB), kept for later requests. The worker's
    pipelines have their own: a tokenizer is never shared across threads."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, subfolder=subfolder)


def validation_tokenizer(preset: Preset, reader: Reader) -> Any:
    """The tokenizer `reader` names, for counting before a job is accepted; None if unavailable."""
    source = _source(preset, reader.role)
    if source is None:
        return None
    try:
        return _tokenizer(source, reader.subfolder)
    except Exception as exc:  # offline without it, a broken folder: the model's load will say so
        log.warning("no tokenizer for %s/%s to count tokens with: %s", preset.name, reader.role, exc)
        return None


# -- counting -------------------------------------------------------------------------------------
def _provider(tokenizer: Any) -> Any:
    """compel's tokenizing half (no text encoder needed to count), chunking as encode() will."""
    from compel.embeddings_provider import EmbeddingsProvider, SplitLongTextMode

    return EmbeddingsProvider(
        tokenizer=tokenizer,
        text_encoder=None,
        device="cpu",
        truncate=False,
        split_long_text_mode=SplitLongTextMode.WORDS,
    )


def _fragments(tokenizer: Any, prompt: Prompt) -> list[tuple[str, float]]:
    """The prompt's fragments less those without tokens (whitespace between groups): compel tokenizes
    fragments one by one, so they add nothing, and it cannot place a weight on them."""
    pieces = prompt.fragments()
    ids = _provider(tokenizer).get_token_ids([t for t, _ in pieces], include_start_and_end_markers=False)
    kept = [piece for piece, tokens in zip(pieces, ids, strict=True) if tokens]
    return kept or [("", 1.0)]


def windows(tokenizer: Any, prompt: Prompt) -> int:
    """How many 77-token windows compel encodes `prompt` in (windows end at word boundaries)."""
    provider = _provider(tokenizer)
    pieces = _fragments(tokenizer, prompt)
    ids, _, _ = provider.get_token_ids_and_expand_weights(
        [t for t, _ in pieces], [w for _, w in pieces], device="cpu"
    )
    return len(ids) // provider.max_token_count


def tokens(tokenizer: Any, text: str) -> int:
    """Tokens of `text` between the markers the tokenizer adds."""
    return len(tokenizer(text, add_special_tokens=False).input_ids)


# -- checks before a job is accepted --------------------------------------------------------------
def check_weighted(req: OpRequest, title: str, readers: Sequence[Reader]) -> None:
    """Syntax, then windows: every text of the request must fit MAX_WINDOWS windows of each reader."""
    parsed = [(path, parse(text, path)) for path, text in texts(req.params)]
    for reader in readers:
        tokenizer = validation_tokenizer(req.preset, reader)
        if tokenizer is None:
            continue
        for path, prompt in parsed:
            _check_windows(req.preset, title, path, windows(tokenizer, prompt), tokenizer, prompt)


def _check_windows(preset: Preset, title: str, path: str, n: int, tokenizer: Any, prompt: Prompt) -> None:
    if n <= MAX_WINDOWS:
        return
    length = tokens(tokenizer, prompt.plain)
    raise RequestError(
        ErrorCode.OUT_OF_RANGE,
        f"{path} is {length} tokens long and needs {n} windows of {WINDOW} tokens (windows end at word "
        f"boundaries); model {preset.name!r} ({title}) reads at most {MAX_WINDOWS} ({MAX_TOKENS} tokens). "
        "Shorten it: nothing is cut silently",
        path,
    )


def check_plain(req: OpRequest, title: str, why: str, readers: Sequence[Reader]) -> None:
    """Syntax, no weighted groups (`why`: what reads the text and why it cannot weigh phrases), and
    each reader's token limit."""
    for path, text in texts(req.params):
        prompt = parse(text, path)
        if prompt.groups:
            at = prompt.groups[0]
            raise PromptSyntaxError(
                path,
                at,
                f"model {req.preset.name!r} ({title}) {why}, so it cannot weigh phrases: the group '(' at "
                f"character {at} would change nothing. Remove the weights, or write '\\(' and '\\)' for "
                "literal parentheses",
            )
        for reader in readers:
            tokenizer = validation_tokenizer(req.preset, reader)
            if tokenizer is not None and reader.limit is not None:
                _check_limit(req.preset, title, path, prompt.plain, tokenizer, reader)


def _check_limit(preset: Preset, title: str, path: str, text: str, tokenizer: Any, reader: Reader) -> None:
    length = tokens(tokenizer, text)
    if reader.limit is not None and length > reader.limit:
        raise RequestError(
            ErrorCode.OUT_OF_RANGE,
            f"{path} is {length} tokens long; model {preset.name!r} ({title}) reads at most "
            f"{reader.limit} tokens with its {reader.name} text encoder. Shorten it: nothing is cut silently",
            path,
        )


# -- encoding at run time ---------------------------------------------------------------------------
@dataclass
class _Read:
    """One text encoder's reading of the prompt and the negative prompt."""

    cond: torch.Tensor
    uncond: torch.Tensor
    empty: torch.Tensor  # its reading of "" (one window): what pads a shorter reading
    pooled: tuple[torch.Tensor, torch.Tensor] | None = None


#: Pipeline arguments that carry text, as strings or as embeddings.
TEXT_ARGS = (
    "prompt",
    "negative_prompt",
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


def sd_text(gen: Generation, pipe: Any, field: str = "prompt") -> dict[str, Any]:
    """`gen.sd_text()` for `pipe`, its text read from params `field` and the negative prompt."""
    return retext(gen.sd_text(prompt=""), gen, pipe, field)


def retext(args: dict[str, Any], gen: Generation, pipe: Any, field: str = "prompt") -> dict[str, Any]:
    """`args` with their text replaced by `pipe`'s reading of it (the rest, generators included, kept)."""
    return {k: v for k, v in args.items() if k not in TEXT_ARGS} | text_args(gen, pipe, field)


def text_args(gen: Generation, pipe: Any, field: str = "prompt") -> dict[str, Any]:
    """The text arguments of `pipe` (see `encode`), computed once per job and set of text encoders:
    every variation of the job reuses them."""
    key = f"prompts:{field}:" + ",".join(str(id(encoder)) for _, encoder in _encoders(pipe))
    params = gen.params
    return gen.once(
        key, lambda: encode(pipe, params.get(field) or "", params.get("negative_prompt") or "", field)
    )


def encode(pipe: Any, text: str, negative: str, field: str = "prompt") -> dict[str, Any]:
    """A prompt (params `field`) and a negative prompt in painters' syntax as `pipe`'s arguments:
    plain strings when neither has weights and both fit one window (diffusers encodes them, as it
    always did), compel's embeddings otherwise (both padded to the same number of windows)."""
    parsed = {
        path: parse(value, path)
        for path, value in ((f"params.{field}", text), ("params.negative_prompt", negative))
    }
    prompt, neg = parsed.values()
    encoders = _encoders(pipe)
    counts = {path: max(windows(tok, p) for tok, _ in encoders) for path, p in parsed.items()}
    if not prompt.weighted and not neg.weighted and max(counts.values()) == 1:
        return {"prompt": prompt.plain, "negative_prompt": neg.plain or None}
    for path, count in counts.items():  # refused before acceptance, unless no tokenizer was readable then
        if count > MAX_WINDOWS:
            raise RequestError(
                ErrorCode.OUT_OF_RANGE,
                f"{path} needs {count} windows of {WINDOW} tokens; at most {MAX_WINDOWS} are read "
                f"({MAX_TOKENS} tokens). Shorten it: nothing is cut silently",
                path,
            )
    return _embeddings(pipe, encoders, prompt, neg)


def _encoders(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs whose readings the pipeline concatenates (SDXL: both; its
    refiner: the second only)."""
    pairs = [
        (getattr(pipe, f"tokenizer{s}", None), getattr(pipe, f"text_encoder{s}", None)) for s in ("", "_2")
    ]
    return [
        (tokenizer, encoder) for tokenizer, encoder in pairs if tokenizer is not None and encoder is not None
    ]


def _embeddings(pipe: Any, encoders: list[tuple[Any, Any]], prompt: Prompt, neg: Prompt) -> dict[str, Any]:
    """compel's readings of every encoder, padded to one length and concatenated as the pipeline's
    own encode_prompt does. SDXL reads penultimate hidden states and pools the last encoder; with no
    negative prompt its base uses zeros (diffusers' `force_zeros_for_empty_prompt`)."""
    xl = hasattr(pipe, "text_encoder_2")
    reads = [
        _read(tok, enc, prompt, neg, xl, xl and k == len(encoders) - 1)
        for k, (tok, enc) in enumerate(encoders)
    ]
    length = max(t.shape[1] for r in reads for t in (r.cond, r.uncond))
    cond = torch.cat([_pad(r.cond, r.empty, length) for r in reads], dim=-1)
    uncond = torch.cat([_pad(r.uncond, r.empty, length) for r in reads], dim=-1)
    args = {"prompt_embeds": cond, "negative_prompt_embeds": uncond}
    if xl and reads[-1].pooled is not None:
        pooled, neg_pooled = reads[-1].pooled
        if not neg.plain and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            args["negative_prompt_embeds"], neg_pooled = torch.zeros_like(cond), torch.zeros_like(pooled)
        args |= {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": neg_pooled}
    return args


def _read(tokenizer: Any, encoder: Any, prompt: Prompt, neg: Prompt, xl: bool, pooled: bool) -> _Read:
    """One encoder's compel reading of both texts, handed over as compel's own parsed structure."""
    from compel import Compel, ReturnedEmbeddingsType
    from compel.embeddings_provider import SplitLongTextMode
    from compel.prompt_parser import Conjunction, FlattenedPrompt

    kind = (
        ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        if xl
        else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
    )
    compel = Compel(
        tokenizer=tokenizer,
        text_encoder=encoder,
        returned_embeddings_type=kind,
        truncate_long_prompts=False,
        split_long_text_mode=SplitLongTextMode.WORDS,
    )
    provider = compel.conditioning_provider
    with torch.no_grad():
        cond, uncond = (
            compel.build_conditioning_tensor_for_conjunction(
                Conjunction([FlattenedPrompt(_fragments(tokenizer, p))])
            )[0]
            for p in (prompt, neg)
        )
        # Pooled from the plain text's first window, as compel and diffusers pool.
        pools = tuple(provider.get_pooled_embeddings([p.plain]) for p in (prompt, neg)) if pooled else None
        return _Read(cond, uncond, provider.empty_z, pools)  # type: ignore[arg-type]


def _pad(tensor: torch.Tensor, empty: torch.Tensor, length: int) -> torch.Tensor:
    """Append readings of "" until `tensor` has `length` tokens (compel's own padding)."""
    while tensor.shape[1] < length:
        tensor = torch.cat([tensor, empty.to(tensor)], dim=1)
    return tensor
