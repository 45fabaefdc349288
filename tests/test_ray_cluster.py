"""Ray extraction on simulated multi-node clusters: the cases in ``tests/ray_cluster_cases.py`` (1 x 2 + 2 x 1
CPU nodes extract the local features and the next run is a cache hit; unplaceable work stops with one
line; a cancel and a killed node cache nothing), run by pytest in a fresh process: in one process with the other
Ray tests, Ray Data's actors on a new cluster were cancelled before they started, after another module's runtime
had stopped."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_simulated_cluster_cases_pass_in_a_process_of_their_own(subprocess_env):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "600",
                             "tests/ray_cluster_cases.py"], cwd=REPO, env=subprocess_env, capture_output=True,
                            text=True, timeout=1500)
    summary = [line for line in result.stdout.splitlines() if " passed" in line or " failed" in line]
    assert result.returncode == 0 and summary and summary[-1].startswith("3 passed"), result.stdout[-3000:]
