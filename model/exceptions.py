"""Exceptions raised by the model package."""


class CheckpointError(RuntimeError):
    """A checkpoint directory is incomplete or does not match the expected layout (names the file/key)."""


class GenerationCancelled(Exception):  # noqa: N818 - control flow, not an error
    """``should_stop()`` returned True: generation was aborted between two decoding steps."""


def first_of(items: list[str], n: int = 5) -> str:
    """How a :class:`CheckpointError` names many keys or files: the first ``n``, and how many more."""
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
