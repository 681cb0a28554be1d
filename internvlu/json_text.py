"""JSON read from files, requests and image metadata that anyone may have written."""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes) -> Any:
    """`json.loads`, except that a document nested deeper than the parser's recursion allows (about a thousand
    levels; no honest file of ours comes near) raises `json.JSONDecodeError`, which every reader of untrusted
    JSON already turns into its one-line error, instead of a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
