"""engine.runtime: the CPU allocator settings are accepted by the C library."""
from __future__ import annotations

import sys

import pytest

from engine import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_settings_are_accepted_and_idempotent(monkeypatch):
    monkeypatch.setattr(runtime, "_tuned", None)
    # glibc rejects (returns 0 for) an mmap threshold above 32 MiB: a wrong constant fails here
    assert runtime.tune_cpu_allocator() is True
    assert runtime.tune_cpu_allocator() is True
