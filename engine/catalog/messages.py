"""One-line error messages and small text helpers shared by the catalog modules."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NoReturn

from engine.errors import CatalogError


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _fail(msg: str) -> NoReturn:
    raise CatalogError(_one_line(msg))


def _short_list(items: Sequence[str], n: int = 8) -> str:
    items = list(items)
    if not items:
        return "none"
    s = ", ".join(items[:n])
    return s + (f", … ({len(items)} in all)" if len(items) > n else "")


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f} %" if n else "n/a"


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
