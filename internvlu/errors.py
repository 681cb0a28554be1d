"""Errors that reach the user as one line: each names the problem and the fix.

The CLI maps `UsageError` to exit code 2 and every other `InternVLUError` to exit code 1.
"""


class InternVLUError(Exception):
    """Base of every error this package raises on purpose."""


class UsageError(InternVLUError, ValueError):
    """A bad argument or input from the caller (file, prompt, size, preset...)."""


class CheckpointError(InternVLUError):
    """A model folder that is missing, incomplete, corrupt or inconsistent."""


class ModelNotFoundError(CheckpointError):
    """A model name that is neither a local folder nor an available Hugging Face repository."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message (transformers and diffusers write paragraphs), for
    quoting it inside one of ours; empty when the message is."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
