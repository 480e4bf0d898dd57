"""'Did you mean' suggestions for error messages (imports nothing from blockzoo, so every layer can use it)."""
from __future__ import annotations

import difflib


def close_matches(word: str, candidates: list[str], n: int = 3) -> str:
    """Return a '; did you mean ...?' suffix naming the closest candidates, or ''."""
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    if not found:
        return ""
    return "; did you mean " + " or ".join(repr(f) for f in found) + "?"
