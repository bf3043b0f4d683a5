"""Every check on a checkpoint without loading its weights: :func:`verify_checkpoint`.

Checks, in either layout: every file present; every safetensors file readable and as long as its
header says; every shard an index lists present and holding its tensors; every tensor present with
the shape its config implies, no unexpected tensor; floating-point dtypes, fp8 only on linear
weights and only with a well-formed scale (``model.checkpoint.fp8_weights``); no unknown config field;
config fields that must agree across files (LLM hidden size = head ``ch_cond`` = projector width,
autoencoder ``z_channels`` = head ``ch_target`` = projector input); the tokenizer readable and holding
the chat, resolution and query tokens the variant needs, within the LLM's vocabulary.

The report lists every problem, one line each naming the file, and carries the configs it read, so
a worker that verified its checkpoint plans and loads it from the same configs. Loading runs the
same tensor check (:func:`check_tensors`) before it reads a weight. ``python -m model.verify``
prints the report.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import transformers

from model.checkpoint.configs import CheckpointConfigs, read_configs
from model.checkpoint.fp8_weights import Fp8Files, check_fp8
from model.checkpoint.layout import (
    GENERATION_CONFIG,
    TOKENIZER_ALSO,
    TOKENIZER_REQUIRED,
    CheckpointFiles,
    ComponentFiles,
    Layout,
    locate_checkpoint,
)
from model.checkpoint.modules import MetaModules
from model.checkpoint.tensor_files import FLOAT_DTYPES, TensorEntry, component_tensors
from model.exceptions import CheckpointError, first_of
from model.positions import MAX_GRID_POSITIONS
from model.prompts import VISION_START, PromptEncoder, query_token, resolution_token
from model.resolutions import supported_sizes

CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


@dataclass
class ModuleSummary:
    name: str
    label: str
    parameters: int
    bytes: int  # the scales of fp8 weights included
    dtypes: dict[str, int]
    fp8_weights: int = 0  # pre-quantised linear weights (each with its scale)


@dataclass
class Report:
    path: Path
    layout: Layout | None = None
    parallel_num: int | None = None
    sizes: tuple[tuple[int, int], ...] = ()
    listed_sizes: tuple[tuple[int, int], ...] | None = None
    modules: list[ModuleSummary] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    configs: CheckpointConfigs | None = None  # when they could be read: what to plan and load from

    @property
    def sound(self) -> bool:
        return not self.problems

    def add(self, error: CheckpointError) -> None:
        self.problems.extend(line for line in str(error).splitlines() if line)


def verify_checkpoint(path: str | Path) -> Report:
    """Every check on the checkpoint at ``path``; the report lists all problems found, not just the first."""
    report = Report(Path(path))
    try:
        files = locate_checkpoint(path)
    except CheckpointError as exc:
        report.add(exc)
        return report
    report.layout = files.layout
    check_files_present(files, report)
    try:
        configs = read_configs(files)
    except CheckpointError as exc:
        report.add(exc)
        return report
    report.configs = configs
    report.parallel_num = configs.parallel_num
    report.sizes = supported_sizes(configs.parallel_num)
    report.listed_sizes = configs.listed_sizes
    check_listed_sizes(configs, report)
    check_weights(configs, report)
    check_tokenizer(configs, report)
    return report


def check_files_present(files: CheckpointFiles, report: Report) -> None:
    for name in TOKENIZER_REQUIRED:
        if not (files.tokenizer_dir / name).is_file():
            report.problems.append(f"{files.relative(files.tokenizer_dir / name)}: missing")
    also = [files.tokenizer_dir / name for name in TOKENIZER_ALSO]
    assert files.llm.config is not None
    also.append(files.llm.config.parent / GENERATION_CONFIG)
    for path in also:
        if not path.is_file():
            report.notes.append(f"{files.relative(path)}: absent (not needed to serve; published checkpoints have it)")


def check_listed_sizes(configs: CheckpointConfigs, report: Report) -> None:
    if configs.listed_sizes is None:
        return
    served = set(report.sizes)
    extra = [s for s in configs.listed_sizes if s not in served]
    if extra:
        listed = ", ".join(f"{h}x{w}" for h, w in extra)
        report.notes.append(
            f"model_index.json: supported_image_sizes also lists {listed}, which a {configs.parallel_num}x "
            "checkpoint does not serve (upstream's table); those are not served"
        )


# ---------------------------------------------------------------------------------------------
# Tensors: the one key and shape check, shared with loading


def key_problems(
    component: ComponentFiles, expected: dict[str, tuple[int, ...]], found: dict[str, TensorEntry]
) -> list[str]:
    """Strict key and shape matching: one line per kind of problem, naming the file and the first keys."""
    weights = component.weights
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"{weights.label()}: missing keys {first_of(missing)}")
    if unexpected:
        problems.append(f"{weights.label()}: unexpected keys {first_of(unexpected)}")
    wrong: dict[Path, list[str]] = {}
    for key in sorted(set(expected) & set(found)):
        if tuple(expected[key]) != found[key].shape:
            wrong.setdefault(found[key].file, []).append(key)
    for path, keys in sorted(wrong.items()):
        listed = ", ".join(f"{k} {found[k].shape} != {tuple(expected[k])}" for k in keys[:5])
        problems.append(f"{weights.relative(path)}: shape mismatch {listed}")
    return problems


@dataclass
class TensorCheck:
    """Per component, in checkpoint order: its tensors (name -> entry; absent if unreadable) and its problems.

    ``tensors`` holds what the modules hold, key for key; the scales of pre-quantised fp8 weights
    are apart, in ``fp8`` (weight key -> scale entry).
    """

    tensors: dict[str, dict[str, TensorEntry]] = field(default_factory=dict)
    problems_of: dict[str, list[str]] = field(default_factory=dict)
    fp8: dict[str, Fp8Files] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        return [line for lines in self.problems_of.values() for line in lines]


def check_tensors(modules: MetaModules) -> TensorCheck:
    """Every component's files read (headers only) and their keys and shapes checked, all problems at once."""
    check = TensorCheck()
    for component in modules.configs.files.components():
        try:
            found = component_tensors(component.weights)
        except CheckpointError as exc:
            check.problems_of[component.name] = str(exc).splitlines()
            continue
        fp8 = check_fp8(modules, component.name, found)
        tensors = {key: entry for key, entry in found.items() if key not in fp8.claimed}
        expected = modules.expected_shapes(component.name)
        check.problems_of[component.name] = key_problems(component, expected, tensors) + fp8.problems
        check.tensors[component.name] = tensors
        check.fp8[component.name] = fp8
    return check


def check_weights(configs: CheckpointConfigs, report: Report) -> None:
    check = check_tensors(MetaModules.build(configs))
    for component in configs.files.components():
        report.problems += check.problems_of[component.name]
        found = check.tensors.get(component.name)
        if found is not None:
            report.problems += dtype_problems(component.weights.relative, found)
            fp8 = check.fp8[component.name]
            report.modules.append(summarize(component.name, component.weights.label(), found, fp8))


def dtype_problems(relative: Callable[[Path], str], found: dict[str, TensorEntry]) -> list[str]:
    by_file: dict[Path, list[str]] = {}
    for key, entry in sorted(found.items()):
        if entry.dtype not in FLOAT_DTYPES:
            by_file.setdefault(entry.file, []).append(f"{key} ({entry.dtype})")
    return [
        f"{relative(path)}: not floating point: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for path, keys in sorted(by_file.items())
    ]


def summarize(name: str, label: str, found: dict[str, TensorEntry], fp8: Fp8Files | None = None) -> ModuleSummary:
    dtypes = Counter(e.dtype for e in found.values())
    scales = list(fp8.scales.values()) if fp8 is not None else []
    return ModuleSummary(
        name=name,
        label=label,
        parameters=sum(math.prod(e.shape) for e in found.values()),
        bytes=sum(e.nbytes for e in (*found.values(), *scales)),
        dtypes=dict(dtypes),
        fp8_weights=len(scales),
    )


# ---------------------------------------------------------------------------------------------
# Tokenizer


def required_special_tokens(parallel_num: int) -> list[str]:
    """The chat tokens, ``<|vision_start|>``, the resolution tokens and ``<|query_1..P-1|>``."""
    grids = sorted({side // 16 for size in supported_sizes(parallel_num) for side in size})
    return [
        *CHAT_TOKENS,
        VISION_START,
        *(resolution_token(g) for g in grids),
        *(query_token(i) for i in range(1, parallel_num)),
    ]


def check_tokenizer(configs: CheckpointConfigs, report: Report) -> None:
    files = configs.files
    label = files.relative(files.tokenizer_dir / "tokenizer_config.json")
    if any(not (files.tokenizer_dir / name).is_file() for name in TOKENIZER_REQUIRED):
        return  # already reported as missing
    try:
        vocab = PromptEncoder.from_directory(files.tokenizer_dir).tokenizer.get_vocab()
    except Exception as exc:  # noqa: BLE001 - any failure of transformers to read the files is the finding
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        report.problems.append(f"{label}: transformers {transformers.__version__} cannot read the tokenizer ({first})")
        return
    tokens_label = files.relative(files.tokenizer_dir / "tokenizer.json")
    missing = [t for t in required_special_tokens(configs.parallel_num) if t not in vocab]
    if missing:
        report.problems.append(f"{tokens_label}: lacks the special token(s) {first_of(missing)}")
    extra_queries = [q for q in range(configs.parallel_num, 1024) if query_token(q) in vocab]
    if extra_queries:
        report.problems.append(
            f"{tokens_label}: has query tokens up to {query_token(max(extra_queries))} but parallel_num is "
            f"{configs.parallel_num} in {files.relative(files.head.config or files.root)} (expected "
            f"{query_token(1)}..{query_token(configs.parallel_num - 1)}: a tokenizer of the other variant?)"
        )
    if resolution_token(MAX_GRID_POSITIONS + 1) in vocab:
        report.notes.append(f"{tokens_label}: has resolution tokens beyond {resolution_token(MAX_GRID_POSITIONS)}")
    top = max(vocab.values(), default=0)
    vocab_size = configs.llm.vocab_size
    if top >= vocab_size:
        report.problems.append(
            f"{tokens_label}: token ids reach {top}, beyond vocab_size {vocab_size} of "
            f"{files.relative(files.llm.config or files.root)}"
        )
