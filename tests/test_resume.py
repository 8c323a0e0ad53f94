"""Kill-and-resume equivalence with real kills: `sppnet train` killed with SIGKILL mid-conv and
mid-fine-tuning, then rerun, writes the same model.pt as a run that was never interrupted."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from detection.core.cache import ENTRY_SUFFIX
from detection.data.demo import make_demo_dataset

pytestmark = pytest.mark.slow

ARGS = ["--max-proposals", "60", "--proposal-width", "160", "--scales", "128,192", "--finetune-iterations", "150",
        "--finetune-hidden", "32", "--finetune-checkpoint-every", "10", "--feature-layer", "ftfc7",
        "--device", "cpu", "--workers", "1", "--quiet"]


def train_command(voc, work_dir):
    return [sys.executable, "-m", "tools.cli", "train", "--data", str(voc), "--work-dir", str(work_dir), *ARGS]


def run_until(command, env, condition, timeout=300):
    """Start ``command``, SIGKILL it as soon as ``condition()`` holds; fail if it ended before that."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            if process.poll() is not None:
                pytest.fail(f"the run ended (exit {process.returncode}) before the kill point: "
                            f"{process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the kill point was not reached in time")
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def flatten(state, prefix=""):
    if isinstance(state, dict):
        return {k: v for key, item in state.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    return {prefix: state}


def test_killed_and_rerun_training_writes_the_same_model(tmp_path):
    voc = make_demo_dataset(tmp_path / "data", num_trainval=4, num_test=1, seed=5, image_size=(160, 120))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every run: same float sums
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(train_command(voc, whole), check=True, env=env, stdout=subprocess.DEVNULL)

    def conv_entries():
        return len(list((killed / "cache" / "conv").glob(f"*/*{ENTRY_SUFFIX}")))

    def checkpoints():
        return list((killed / "cache" / "finetune").glob("*/finetune_checkpoint.pt"))

    run_until(train_command(voc, killed), env, lambda: conv_entries() >= 3)  # mid-conv
    assert not (killed / "model.pt").exists()
    run_until(train_command(voc, killed), env, lambda: bool(checkpoints()))  # mid-fine-tuning
    subprocess.run(train_command(voc, killed), check=True, env=env, stdout=subprocess.DEVNULL)
    assert "finetune: resuming at iteration" in (killed / "train.log").read_text()

    a = flatten(torch.load(whole / "model.pt", map_location="cpu", weights_only=True))
    b = flatten(torch.load(killed / "model.pt", map_location="cpu", weights_only=True))
    assert a.keys() == b.keys() and any(k.startswith("head.") for k in a)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
