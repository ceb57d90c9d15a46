"""busy_cores() sees other processes' CPU use now, not our own past work (the load average did)."""

import subprocess
import sys

from edgeprune.bench.host_load import busy_cores


def test_a_spinning_process_is_seen_as_busy_cpu():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()+5\nwhile time.time()<t: pass"])
    try:
        assert busy_cores(0.5) >= 0.5  # one core spinning (plus whatever else runs)
    finally:
        spinner.kill()
        spinner.wait()
