"""``--json``'s ``peak_rss_mb`` is psiq's own peak, not the size of whatever started it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

PROBE = "from psi.api import _peak_rss_mb; print(_peak_rss_mb())"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (VmHWM)")
def test_peak_rss_ignores_the_image_before_exec():
    """A 600 MiB process execs into psiq's probe: Linux carries ru_maxrss across execve, so
    RUSAGE_SELF alone would report >= 600 MiB here; the probe must report its own peak."""
    launcher = ("import os, sys\n"
                "big = bytearray(600 << 20)\n"
                "big[::4096] = b'\\1' * len(range(0, len(big), 4096))  # touch every page\n"
                f"os.execv(sys.executable, [sys.executable, '-c', {PROBE!r}])\n")
    out = subprocess.run([sys.executable, "-c", launcher], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert 10 < float(out) < 300, out
