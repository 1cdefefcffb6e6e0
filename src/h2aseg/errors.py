"""One-line descriptions of errors for the command line, and a safe ``torch.load`` wording.

Library errors arrive with their own phrasing (an ``OSError``'s errno, a ``KeyError``'s bare key,
torch's advice to load unsafely); these helpers turn each into one line that names the culprit.
"""

from __future__ import annotations

import pickle

UNSAFE_CHECKPOINT = (
    "not a checkpoint that loads with weights_only=True (corrupt, not a PyTorch file, "
    "or it holds objects other than tensors and plain values)"
)
"""What a refused ``torch.load(weights_only=True)`` means, without torch's advice to load unsafely."""


def error_line(error: BaseException) -> str:
    """The first line of ``error``'s message, naming the file of an ``OSError`` and the key of a
    ``KeyError``; other types than ``ValueError`` and ``OSError`` are prefixed with their name."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    if isinstance(error, KeyError):
        return f"missing key {error.args[0]!r}" if error.args else "missing key"
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(error, (ValueError, OSError)):
        return first or type(error).__name__
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def checkpoint_load_error(error: BaseException) -> str:
    """Why ``torch.load`` refused a file, in one line that never suggests ``weights_only=False``."""
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error):
        return UNSAFE_CHECKPOINT
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def root_cause(error: BaseException) -> str:
    """``Type: first line`` of the innermost exception of a chain (MONAI nests the reader's error)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
