"""Exceptions raised by the model package."""


class CheckpointError(RuntimeError):
    """A checkpoint directory is incomplete or does not match the expected layout (names the file/key)."""


class GenerationCancelled(Exception):  # noqa: N818 - control flow, not an error
    """``should_stop()`` returned True: generation was aborted between two decoding steps."""
