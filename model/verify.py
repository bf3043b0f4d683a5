"""``python -m model.verify PATH``: check a downloaded checkpoint completely without loading its weights.

Checks, in either layout: every file present; every safetensors file readable and as long as its
header says; every shard an index lists present and holding its tensors; every tensor present with
the shape its config implies, no unexpected tensor; floating-point dtypes; no unknown config field;
config fields that must agree across files (LLM hidden size = head ``ch_cond`` = projector width,
autoencoder ``z_channels`` = head ``ch_target`` = projector input); the tokenizer readable and holding
the chat, resolution and query tokens the variant needs, within the LLM's vocabulary.

Exit status 0 with a summary (layout, variant, parameters and bytes per module) when the checkpoint
is sound; 1 with one line per problem, each naming the file and what is wrong. Workers run the same
checks before loading and refuse to start with the same lines.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import transformers

from model.checkpoint import CheckpointConfigs, CheckpointFiles, Layout, locate_checkpoint, read_configs
from model.errors import CheckpointError
from model.loading import MetaModules, key_problems
from model.positions import MAX_GRID_POSITIONS
from model.prompts import VISION_START, PromptEncoder, query_token, resolution_token
from model.resolutions import supported_sizes
from model.tensor_files import FLOAT_DTYPES, TensorEntry, component_tensors

# Files the loader reads besides configs and weights, and files a published checkpoint also has.
TOKENIZER_REQUIRED = ("tokenizer.json", "tokenizer_config.json")
TOKENIZER_ALSO = ("special_tokens_map.json", "vocab.json", "merges.txt")
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


@dataclass
class ModuleSummary:
    name: str
    label: str
    parameters: int
    bytes: int
    dtypes: dict[str, int]


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
    also.append(files.llm.config.parent / "generation_config.json")
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


def check_weights(configs: CheckpointConfigs, report: Report) -> None:
    modules = MetaModules.build(configs)
    for component in configs.files.components():
        try:
            found = component_tensors(component.weights)
        except CheckpointError as exc:
            report.add(exc)
            continue
        report.problems += key_problems(component, modules.expected_shapes(component.name, configs.llm), found)
        report.problems += dtype_problems(component.weights.relative, found)
        report.modules.append(summarize(component.name, component.weights.label(), found))


def dtype_problems(relative, found: dict[str, TensorEntry]) -> list[str]:  # type: ignore[no-untyped-def]
    by_file: dict[Path, list[str]] = {}
    for key, entry in sorted(found.items()):
        if entry.dtype not in FLOAT_DTYPES:
            by_file.setdefault(entry.file, []).append(f"{key} ({entry.dtype})")
    return [
        f"{relative(path)}: not floating point: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for path, keys in sorted(by_file.items())
    ]


def summarize(name: str, label: str, found: dict[str, TensorEntry]) -> ModuleSummary:
    dtypes = Counter(e.dtype for e in found.values())
    return ModuleSummary(
        name=name,
        label=label,
        parameters=sum(math.prod(e.shape) for e in found.values()),
        bytes=sum(e.nbytes for e in found.values()),
        dtypes=dict(dtypes),
    )


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
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        report.problems.append(f"{tokens_label}: lacks the special token(s) {', '.join(missing[:5])}{more}")
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


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def summary_lines(report: Report) -> list[str]:
    sizes = ", ".join(f"{w}x{h}" for h, w in report.sizes)
    lines = [
        f"checkpoint: {report.path}",
        f"layout: {report.layout.value if report.layout else '?'}",
        f"variant: parallel_num {report.parallel_num} ({report.parallel_num}x); serves {len(report.sizes)} sizes "
        f"(WxH): {sizes}",
    ]
    for m in report.modules:
        dtypes = ", ".join(f"{d} x{n}" for d, n in sorted(m.dtypes.items()))
        lines.append(
            f"{m.name:<12}{human_count(m.parameters):>10} parameters {human_bytes(m.bytes):>12}  [{dtypes}]  {m.label}"
        )
    total_params = sum(m.parameters for m in report.modules)
    total_bytes = sum(m.bytes for m in report.modules)
    lines.append(f"{'total':<12}{human_count(total_params):>10} parameters {human_bytes(total_bytes):>12}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.verify", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="checkpoint directory (native or diffusers layout)")
    args = parser.parse_args(argv)
    report = verify_checkpoint(args.path)
    for note in report.notes:
        print(f"note: {note}")
    if not report.sound:
        for problem in report.problems:
            print(problem)
        print(f"FAILED: {len(report.problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    for line in summary_lines(report):
        print(line)
    print(f"OK: {args.path} is a sound BitDance checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
