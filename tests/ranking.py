"""Comparing two BM25 rankings (the keyword search tests of tests/tasks): equal up to float summation order and ties."""

from __future__ import annotations

import itertools

__all__ = ["same_ranking"]


def same_ranking(pruned, exact) -> bool:
    """Same scores (to 1e-9: the sum's order may differ) and the same chunks, ties aside: chunks of equal score
    may come in either order, and at the n-th place either of them may be kept."""
    if [round(s, 9) for _, s in pruned] != [round(s, 9) for _, s in exact]:
        return False
    groups = lambda r: {k: {c for c, _ in g} for k, g in itertools.groupby(r, key=lambda x: round(x[1], 9))}  # noqa: E731
    a, b = groups(pruned), groups(exact)
    last = round(exact[-1][1], 9) if exact else None
    return all(a[k] == b[k] for k in b if k != last)
