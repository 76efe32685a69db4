"""Small shared utilities."""
import subprocess
import sys
from pathlib import Path

import pytest

from igmu.utils.memory import peak_rss_mb


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_peak_rss_of_a_child_process_is_its_own_not_its_parents():
    ballast = bytearray(600 * 2**20)  # 600 MiB resident in the parent (zero pages are touched by bytearray)
    assert peak_rss_mb() > 600
    child = subprocess.run([sys.executable, "-c", "from igmu.utils.memory import peak_rss_mb; print(peak_rss_mb())"],
                           check=True, capture_output=True, text=True)
    assert 0 < float(child.stdout) < 300, child.stdout  # getrusage's ru_maxrss would report >= 600 here
    del ballast
