"""Placeholder: replaced by the optimized-BLAS loader (see issue 2, item 4)."""


def ensure() -> None:
    return None
