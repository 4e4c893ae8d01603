"""``python -m njet_convert.cli``: the ``njet-convert`` command."""

from __future__ import annotations

import sys

from . import main

__all__: list[str] = []

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
