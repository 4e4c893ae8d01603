"""Host memory reuse: the entry points ask PyTorch for huge pages before the first tensor, keep glibc's freed blocks,
and leave a user's own settings alone. Each case runs in a fresh interpreter (PyTorch reads its switch once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="huge pages and glibc's mallopt are Linux features")

_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_PROBE = """
import json, sys
{before}
from njet_convert.host_memory import huge_pages_active, reuse_host_memory
applied = reuse_host_memory()
assert reuse_host_memory() == applied  # idempotent
import os
print(json.dumps({{"applied": applied, "active": huge_pages_active(), "env": os.environ.get("THP_MEM_ALLOC_ENABLE")}}))
"""


def _probe(before: str = "", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")}
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(before=before)], capture_output=True, text=True,
                          timeout=120, env={**clean, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _kernel_offers_huge_pages() -> bool:
    return _THP.exists() and "[never]" not in _THP.read_text()


def test_before_the_first_tensor_huge_pages_take_effect() -> None:
    if not _kernel_offers_huge_pages():
        pytest.skip(f"the kernel offers no transparent huge pages ({_THP} says never or is missing)")
    result = _probe()
    assert result["applied"] == {"huge_pages": True, "heap_reuse": True}
    assert result["env"] == "1" and result["active"] is True


def test_after_a_tensor_the_switch_is_too_late_and_says_so() -> None:
    result = _probe(before="import torch; torch.ones(4)")
    assert result["applied"]["huge_pages"] is True and result["active"] is False


def test_a_users_own_setting_stands() -> None:
    result = _probe(THP_MEM_ALLOC_ENABLE="0", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1048576")
    assert result["applied"] == {"huge_pages": False, "heap_reuse": False}
    assert result["env"] == "0" and result["active"] is False
