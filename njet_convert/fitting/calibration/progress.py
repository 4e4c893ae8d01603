"""The calibration's progress display: one tqdm bar per stage (layers done, time left), the current layer and its
output error beside it, and one line for each layer whose refit was skipped and why. Silent when disabled."""

from __future__ import annotations

import sys

from .strategy import LayerResult

__all__ = ["Progress"]


class Progress:
    """Bars on stderr when ``enabled``; every method is a no-op otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def bar(self, total: int, desc: str, unit: str):
        """A new bar of ``total`` steps (``None`` when disabled)."""
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)

    def step(self, bar, name: str, result: LayerResult) -> None:
        """One layer done: the bar advances, showing the layer; a skip is written as its own line."""
        if bar is None:
            return
        if result.skipped:
            bar.write(f"[calibrate] {name}: {result.describe()}", file=sys.stderr)
        error = f"{result.error:.4f}" if result.error == result.error else "-"
        bar.set_postfix_str(f"{name} ({result.strategy}) error={error}", refresh=False)
        bar.update(1)

    def close(self, bar) -> None:
        if bar is not None:
            bar.close()

    def note(self, line: str) -> None:
        """A line about a whole stage."""
        if self.enabled:
            print(f"[calibrate] {line}", file=sys.stderr, flush=True)
