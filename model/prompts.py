"""The prompt side of BitDance: chat templates, the image prefix and its special tokens."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from model.exceptions import CheckpointError

CONDITIONAL_TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
UNCONDITIONAL_PROMPT = "<|im_start|>assistant\n"
VISION_START = "<|vision_start|>"

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def resolution_token(grid_size: int) -> str:
    return f"<|res_{grid_size}|>"


def query_token(index: int) -> str:
    return f"<|query_{index}|>"


def image_prefix_tokens(grid_h: int, grid_w: int, parallel_num: int) -> list[str]:
    """``<|vision_start|> <|res_H|> <|res_W|> <|query_1|> ... <|query_{P-1}|>``."""
    queries = [query_token(i) for i in range(1, parallel_num)]
    return [VISION_START, resolution_token(grid_h), resolution_token(grid_w), *queries]


class PromptEncoder:
    """Turns prompts into token ids with the checkpoint's tokenizer (no BOS/EOS is added)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer

    @classmethod
    def from_directory(cls, path: str | Path) -> PromptEncoder:
        path = Path(path)
        for name in TOKENIZER_FILES:
            if not (path / name).is_file():
                raise CheckpointError(f"tokenizer file {name} is missing from {path}")
        return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True))

    def conditional_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(CONDITIONAL_TEMPLATE.format(prompt=prompt), add_special_tokens=False)

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt``'s conditional row, chat template included (what the memory plan's
        ``prompt_tokens`` counts)."""
        return len(self.conditional_ids(prompt))

    def unconditional_ids(self) -> list[int]:
        return self.tokenizer.encode(UNCONDITIONAL_PROMPT, add_special_tokens=False)

    def special_ids(self, tokens: list[str]) -> list[int]:
        """Ids of special tokens; a token the tokenizer lacks is a checkpoint error naming it."""
        vocab = self.tokenizer.get_vocab()
        missing = [token for token in tokens if token not in vocab]
        if missing:
            raise CheckpointError(f"the tokenizer lacks the special token(s) {', '.join(missing[:5])}")
        return [vocab[token] for token in tokens]
