"""Method options: unknown keyword options are reported by name, with the ones accepted."""

from __future__ import annotations

import functools
import inspect


@functools.lru_cache(maxsize=None)
def keyword_options(fn) -> tuple:
    """The keyword-only parameters of a method function (cached: this runs on every forward)."""
    params = inspect.signature(fn).parameters
    return tuple(name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_options(caller: str, fn, options: dict) -> None:
    allowed = keyword_options(fn)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{caller} got unknown options {unknown}; it accepts {list(allowed)}")
