"""The RoPE an LLM ``config.json`` asks for, read alike under every transformers the project allows.

transformers 4.57 and 5.x keep RoPE in different keys. 4.57 reads ``rope_theta`` (default 10000)
and ``rope_scaling`` (null for plain RoPE); 5.x reads ``rope_parameters`` and folds the 4.57 keys
into it, and its ``save_pretrained`` writes ``rope_parameters`` alone. 4.57 ignores that key
without a word, so a config written by transformers 5 ran there with theta 10000 instead of the
1e6 it names, a different model from layer 0 (70 % token agreement with the official code on the
tiny 16x checkpoint). The transformers-4 form (``rope_theta`` + ``rope_scaling``, as the released
configs are written) is read identically by both versions, for every static RoPE type.

So the config reader maps the raw config to that form (:func:`with_transformers4_rope`) before building
``Qwen3Config``, and checks the rotary embedding it then gets (:func:`check_rotary_embedding`),
so that a future transformers that reads RoPE differently fails loudly instead of drawing other
images. Types whose frequencies are not fixed are refused: ``dynamic`` and ``longrope`` recompute
them from the longest position in the batch, so one row's image would depend on the others, and
keys already cached under the old frequencies would no longer match new queries (``longrope``
does not even build under 4.57).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from model.exceptions import CheckpointError

DEFAULT_THETA = 10000.0  # what both versions use when a config names no theta
# The RoPE types whose frequencies are fixed at load, and the fields each takes besides its theta
# (the fields both versions' validators accept).
ROPE_FIELDS: dict[str, frozenset[str]] = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    "llama3": frozenset({"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}),
    "yarn": frozenset(
        {
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        }
    ),
}
SUPPORTED_ROPE_TYPES = tuple(sorted(ROPE_FIELDS))
REQUIRED_FIELDS: dict[str, frozenset[str]] = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    "llama3": ROPE_FIELDS["llama3"],
    # 4.57 falls back to max_position_embeddings without it, 5.x requires it: required here
    "yarn": frozenset({"factor", "original_max_position_embeddings"}),
}
REFUSED_TYPES = {
    "dynamic": "its frequencies follow the longest position in the batch, so one image would depend on the others",
    "longrope": "its frequencies follow the longest position in the batch (and transformers 4.57 cannot build it)",
}
LAYER_TYPE_KEYS = ("full_attention", "sliding_attention")  # transformers 5 may nest rope_parameters by layer type
TRANSFORMERS4_FORM = "rope_theta + rope_scaling"
TRANSFORMERS5_FORM = "rope_parameters"


@dataclass(frozen=True)
class Rope:
    """The rotary embedding a config asks for: its type, theta and the type's other fields."""

    rope_type: str
    theta: float
    fields: dict[str, Any] = field(default_factory=dict)
    source: str = TRANSFORMERS4_FORM  # which keys the config gave it in

    def describe(self) -> str:
        """``default, theta 1000000`` or ``yarn (factor 4.0, ...), theta 1000000``."""
        extra = ", ".join(f"{k} {v}" for k, v in sorted(self.fields.items()))
        return f"{self.rope_type}{f' ({extra})' if extra else ''}, theta {number(self.theta)}"

    def transformers4_fields(self) -> dict[str, Any]:
        """``rope_theta`` and ``rope_scaling`` (null for plain RoPE): the keys 4.57 and 5.x read alike."""
        scaling = None if self.rope_type == "default" else {"rope_type": self.rope_type, **self.fields}
        return {"rope_theta": self.theta, "rope_scaling": scaling}


def read_rope(raw: dict[str, Any], name: str) -> Rope:
    """The RoPE of the LLM config ``raw`` (the file ``name``), whichever transformers wrote it.

    A :class:`CheckpointError` naming ``name`` for a type the pipeline cannot honour, fields that
    disagree between ``rope_theta``, ``rope_scaling`` and ``rope_parameters``, or malformed values.
    """
    parameters = _rope_parameters(raw, name)
    scaling = raw.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise CheckpointError(f"{name}: rope_scaling must be an object or null, got {scaling!r}")
    sources = {"rope_parameters": parameters, "rope_scaling": dict(scaling or {})}
    rope_type = _rope_type(sources, name)
    forms = []
    if "rope_theta" in raw or "rope_scaling" in raw:
        forms.append(TRANSFORMERS4_FORM)
    if parameters:
        forms.append(TRANSFORMERS5_FORM)
    source = " and ".join(forms) or "no RoPE field (the default)"
    return Rope(rope_type, _theta(raw, sources, name), _type_fields(rope_type, sources, name), source)


def _theta(raw: dict[str, Any], sources: dict[str, dict[str, Any]], name: str) -> float:
    named = {f"{key}.rope_theta": value.get("rope_theta") for key, value in sources.items()}
    named["rope_theta"] = raw.get("rope_theta")
    given = {key: value for key, value in named.items() if value is not None}
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise CheckpointError(f"{name}: {key} must be a positive number, got {value!r}")
    if len({float(v) for v in given.values()}) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in given.items())
        raise CheckpointError(f"{name}: the RoPE theta disagrees between fields ({listed})")
    return float(next(iter(given.values()))) if given else DEFAULT_THETA


def _rope_type(sources: dict[str, dict[str, Any]], name: str) -> str:
    types = {}
    for key, value in sources.items():
        named = {value.get("rope_type"), value.get("type")} - {None}  # "type": transformers' old spelling
        if len(named) > 1:
            raise CheckpointError(f"{name}: {key} names two RoPE types ({', '.join(sorted(map(str, named)))})")
        if named:
            types[key] = named.pop()
    if len(set(types.values())) > 1:
        listed = ", ".join(f"{k} {v!r}" for k, v in types.items())
        raise CheckpointError(f"{name}: the RoPE type disagrees between fields ({listed})")
    rope_type = next(iter(types.values()), "default")
    if rope_type in REFUSED_TYPES:
        raise CheckpointError(f"{name}: RoPE type {rope_type!r} is not supported: {REFUSED_TYPES[rope_type]}")
    if rope_type not in ROPE_FIELDS:
        supported = ", ".join(SUPPORTED_ROPE_TYPES)
        raise CheckpointError(f"{name}: unknown RoPE type {rope_type!r} (supported: {supported})")
    return str(rope_type)


def _type_fields(rope_type: str, sources: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    parameters, scaling = sources["rope_parameters"], sources["rope_scaling"]
    merged: dict[str, Any] = {}
    for value in (parameters, scaling):
        for key, item in value.items():
            if key in ("rope_type", "type", "rope_theta"):
                continue
            if key in merged and merged[key] != item:
                raise CheckpointError(
                    f"{name}: RoPE field {key} disagrees between rope_parameters ({parameters[key]!r}) "
                    f"and rope_scaling ({scaling[key]!r})"
                )
            merged[key] = item
    unknown = sorted(set(merged) - ROPE_FIELDS[rope_type])
    if unknown:
        raise CheckpointError(f"{name}: RoPE field(s) {', '.join(unknown)} not understood for type {rope_type!r}")
    missing = sorted(REQUIRED_FIELDS[rope_type] - set(merged))
    if missing:
        raise CheckpointError(f"{name}: RoPE type {rope_type!r} needs field(s) {', '.join(missing)}")
    return merged


def _rope_parameters(raw: dict[str, Any], name: str) -> dict[str, Any]:
    parameters = raw.get("rope_parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise CheckpointError(f"{name}: rope_parameters must be an object or null, got {parameters!r}")
    nested = [key for key in LAYER_TYPE_KEYS if isinstance(parameters.get(key), dict)]
    if not nested:
        return dict(parameters)
    if set(parameters) != set(nested):
        raise CheckpointError(f"{name}: rope_parameters mixes per-layer-type and plain fields")
    distinct = {repr(sorted(parameters[key].items())) for key in nested}
    if len(distinct) > 1:
        raise CheckpointError(f"{name}: rope_parameters differ between layer types ({', '.join(nested)})")
    return dict(parameters[nested[0]])


def with_transformers4_rope(raw: dict[str, Any], rope: Rope) -> dict[str, Any]:
    """``raw`` with its RoPE (``read_rope(raw)``) in the transformers-4 keys only, other keys kept.

    transformers 4.57 and 5.x build the same ``Qwen3Config`` RoPE from the result, whichever
    version wrote ``raw``: ``rope_parameters`` is dropped, ``rope_theta`` and ``rope_scaling`` set.
    """
    portable = {k: v for k, v in raw.items() if k != "rope_parameters"}
    portable.update(rope.transformers4_fields())
    return portable


def expected_inv_freq(rope: Rope, head_dim: int, device: torch.device) -> torch.Tensor | None:
    """The inverse frequencies ``rope`` implies, where they have a closed form (default, linear)."""
    if rope.rope_type not in ("default", "linear"):
        return None
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    return inv_freq / float(rope.fields["factor"]) if rope.rope_type == "linear" else inv_freq


def check_rotary_embedding(rotary: torch.nn.Module, rope: Rope, head_dim: int, name: str) -> None:
    """Refuse a rotary embedding that does not compute ``rope`` (a transformers that reads RoPE otherwise).

    Checks the type it built and, where they have a closed form, its inverse frequencies
    (relative 1e-5: a wrong theta differs by orders of magnitude, a device's ``pow`` by an ulp).
    """
    built = getattr(rotary, "rope_type", None)
    if built != rope.rope_type:
        raise CheckpointError(
            f"{name}: the installed transformers built RoPE type {built!r}, but the config asks for {rope.describe()}"
        )
    inv_freq = getattr(rotary, "inv_freq", None)
    if not isinstance(inv_freq, torch.Tensor) or inv_freq.shape != (head_dim // 2,) or inv_freq.is_meta:
        raise CheckpointError(f"{name}: the installed transformers built no usable RoPE frequencies")
    expected = expected_inv_freq(rope, head_dim, inv_freq.device)
    if expected is not None and not torch.allclose(inv_freq.float(), expected, rtol=1e-5, atol=0.0):
        theta = rope_theta_of(inv_freq.float().cpu(), head_dim)
        raise CheckpointError(
            f"{name}: the installed transformers computes RoPE with theta {number(theta)}, but the config asks for "
            f"{rope.describe()}"
        )


def rope_theta_of(inv_freq: torch.Tensor, head_dim: int) -> float:
    """The theta that plain RoPE frequencies ``inv_freq`` were computed from (their second entry)."""
    if len(inv_freq) < 2 or float(inv_freq[1]) <= 0:
        return float("nan")
    return float(inv_freq[1]) ** (-head_dim / 2)


def number(value: float) -> str:
    """``1000000`` rather than ``1e+06``: thetas as config files write them."""
    return f"{value:.0f}" if value.is_integer() and abs(value) < 1e16 else f"{value:g}"


def head_dim_of(config: Any) -> int:
    """The rotary width of a ``Qwen3Config``, as both versions' rotary embedding computes it."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
