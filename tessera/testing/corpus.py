"""A small text corpus of Python-like files, for tests and benchmarks that need data of their own."""

from __future__ import annotations

from pathlib import Path


def write_corpus(root: Path) -> Path:
    """100 small modules in 4 packages (``alpha`` to ``delta``) under ``root``; returns ``root``."""
    for pkg in ("alpha", "beta", "gamma", "delta"):
        for i in range(25):
            f = root / pkg / f"mod{i}.py"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(
                f'"""Module {i} of {pkg}."""\n\n' + f"def {pkg}_{i}(x):\n    return x * {i}\n\n" * 15
            )
    return root
