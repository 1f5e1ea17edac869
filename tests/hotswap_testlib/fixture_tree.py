"""The test apps' sources: ``base/`` is the first version; ``versions/VSN/`` holds the files that change in VSN."""
from __future__ import annotations

import shutil
from pathlib import Path


def overlay(src: Path, chain, version: str, dest, what: str) -> Path:
    """Write version ``version`` of the app in ``src`` to ``dest`` (replaced): ``base/``, then each of
    ``versions/V/`` along ``chain`` up to ``version``, later files over earlier ones."""
    if version not in chain:
        raise ValueError(f"no {what} version {version}")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src / "base", dest)
    for v in chain[1:chain.index(version) + 1]:
        shutil.copytree(src / "versions" / v, dest, dirs_exist_ok=True)
    return dest
