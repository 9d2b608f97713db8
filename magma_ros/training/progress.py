"""One progress bar for every long training job (dataset build, label-traces, evaluate-offline)."""

from __future__ import annotations

from typing import Any


class _Silent:
    """What :func:`progress_bar` returns when progress is off: accepts tqdm's calls, shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, unit: str, desc: str) -> Any:
    """A tqdm bar over ``total`` items, or a silent stand-in when disabled or there is nothing to do."""
    if not enabled or total <= 0:
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True)
