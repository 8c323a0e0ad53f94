"""The selective-search worker pool: order-free results, a dead worker's items reported, workers that die with their parent."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proposals.pool import WORKER_DIED, WorkerPool

REPO = Path(__file__).resolve().parents[1]


def square_or_crash(n: int) -> int:
    """n², except that n = -1 kills its worker process the way a decoder segfault would."""
    if n == -1:
        os.kill(os.getpid(), signal.SIGKILL)
    return n * n


def lost(n: int, reason: str) -> str:
    return reason


@pytest.mark.parametrize("workers", [0, 2])
def test_results_for_every_item_in_any_order(workers):
    pool = WorkerPool(workers)
    assert sorted(pool.map_unordered(square_or_crash, range(7), lost)) == [(n, n * n) for n in range(7)]
    assert pool.wait_seconds > 0


def test_a_dead_worker_fails_its_items_and_a_new_one_serves_the_rest():
    results = dict(WorkerPool(1, in_flight_per_worker=1).map_unordered(square_or_crash, [2, -1, 3, 4], lost))
    assert results == {2: 4, -1: WORKER_DIED, 3: 9, 4: 16}


def children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


PARENT = """
import sys, time
from proposals.pool import WorkerPool
import tests.test_pool as t
for item in WorkerPool(2).map_unordered(t.sleep_then_square, range(100), t.lost):
    print(item, flush=True)
"""


def sleep_then_square(n: int) -> int:
    time.sleep(0.5)
    return n * n


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_and_resource_tracker_die_with_a_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        parent.stdout.readline()  # the workers are up and working
        helpers = children(parent.pid)
        # two workers and multiprocessing's resource tracker
        assert len(helpers) == 3, helpers
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while any(map(alive, helpers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in helpers if alive(pid)]
    finally:
        parent.kill()


def test_the_workers_code_does_not_load_torch():
    """A worker imports the module of the function it runs: torch would cost it ~700 MB and seconds."""
    code = "import sys, proposals.store, detection.runs.batch.pipeline; print(sorted({'torch', 'torchvision'} & set(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.stdout.strip() == "[]"
