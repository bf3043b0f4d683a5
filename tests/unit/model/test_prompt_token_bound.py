"""Issue 19, item 8: the API's prompt cap (``core.schemas.prompt_token_bound``) bounds the tokens the
checkpoint's real tokenizer makes, for the prompts that cost the most tokens per character.

The tiny checkpoint's tokenizer is built as Qwen's is (byte-level BPE, Qwen2's split regex, NFC,
Qwen's special tokens and BitDance's added tokens) with a 1000-token vocabulary, so it merges far
less than the 14B checkpoint's 151k: its counts are closer to the bound, the harder case.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from core.schemas import PROMPT_MAX_TOKENS, BitDanceInput, prompt_token_bound
from model.checkpoint.configs import read_configs
from model.prompts import CONDITIONAL_TEMPLATE, PromptEncoder

SPECIAL_TOKENS_IN_TEMPLATE = CONDITIONAL_TEMPLATE.count("<|")


@pytest.fixture(scope="module")
def encoder(tiny16_dir: Path) -> PromptEncoder:
    return PromptEncoder.from_directory(read_configs(tiny16_dir).files.tokenizer_dir)


def template_overhead() -> int:
    """The template's own share of a conditional row's bound: its special tokens and its other bytes."""
    text = CONDITIONAL_TEMPLATE.format(prompt="")
    for special in ("<|im_start|>", "<|im_end|>"):
        text = text.replace(special, "")
    return SPECIAL_TOKENS_IN_TEMPLATE + len(text.encode())


def costly_prompts() -> dict[str, str]:
    rng = random.Random(19)
    planes = [(0x20, 0x7E), (0xA0, 0x2FFF), (0x3000, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x10000, 0x3FFFF)]

    def random_text(count: int) -> str:
        chars = []
        while len(chars) < count:
            low, high = rng.choice(planes)
            code = rng.randint(low, high)
            if not 0xD800 <= code <= 0xDFFF:
                chars.append(chr(code))
        return "".join(chars)

    return {
        "math bold (issue: 4 tokens each)": "\U0001d400" * 2500,
        "ascii": "A red fox in a snowy forest, golden hour. " * 200,
        "digits and punctuation": "".join(rng.choice("0123456789!?.,;:-_()[]{}") for _ in range(5000)),
        "whitespace runs": " \t\n  \n\n\t " * 700,
        "cjk": "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(3000)),
        "hangul": "".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(3000)),
        "emoji with zwj and skin tones": "\U0001f469\U0001f3fd\u200d\U0001f4bb\U0001f1fa\U0001f1f8" * 400,
        "combining marks": "e\u0301\u0308\u0323\u0331" * 1000,
        "nfc lengthens (U+1D160, U+FB2C, U+0958)": "\U0001d160\ufb2c\u0958\u0344" * 600,
        "special token literals": "<|im_end|><|im_start|><|vision_start|><|res_32|><|query_3|>" * 150,
        "lone high bytes and controls": "\x00\x7f\x80\x9f\u00ad\ufeff\ufffd" * 700,
        "random unicode": random_text(2500),
    }


@pytest.mark.parametrize("name", sorted(costly_prompts()))
def test_the_byte_bound_holds_for_the_checkpoint_tokenizer(encoder: PromptEncoder, name: str) -> None:
    prompt = costly_prompts()[name]
    tokens = len(encoder.tokenizer.encode(prompt, add_special_tokens=False))
    assert tokens <= prompt_token_bound(prompt), name
    assert encoder.prompt_tokens(prompt) <= prompt_token_bound(prompt) + template_overhead(), name


def test_the_api_caps_the_prompt_in_tokens(encoder: PromptEncoder) -> None:
    """10,000 x U+1D400 passed the 10,000-character cap before, as 40,000 tokens; an ASCII prompt of
    10,000 characters is still accepted."""
    issue = "\U0001d400" * 10_000
    assert len(encoder.tokenizer.encode(issue, add_special_tokens=False)) > PROMPT_MAX_TOKENS
    with pytest.raises(ValueError, match="at most 10000 tokens"):
        BitDanceInput(prompt=issue)
    longest_ascii = ("a lighthouse at dusk " * 500)[:10_000]
    assert BitDanceInput(prompt=longest_ascii).prompt == longest_ascii
    widest = "\U0001d400" * (PROMPT_MAX_TOKENS // 4)
    accepted = BitDanceInput(prompt=widest)
    assert len(encoder.tokenizer.encode(accepted.prompt, add_special_tokens=False)) <= PROMPT_MAX_TOKENS
