"""Timing and memory for benchmarks: per-section wall and CPU time, peak memory, the device's name.

On a GPU every timed section starts and ends with ``torch.cuda.synchronize``. CPU time is the
process's, all threads: the work done, whatever else shares the CPU (wall time also counts
waiting for a core). Peak memory is the process's peak resident set (Linux, reset through
``/proc/self/clear_refs``) and ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import contextlib
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import torch

class Stopwatch:
    """Wall time accumulated per named section; on CUDA each section is synchronised at both ends.

    ``cpu_seconds`` holds the process's CPU time (all threads) per section: on a CPU shared with
    other jobs it measures the work done, where wall time also counts waiting for a core.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self._sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        yield
        self._sync()
        self.seconds[name] += time.perf_counter() - start
        self.cpu_seconds[name] += time.process_time() - cpu_start


def reset_peak_memory(device: torch.device) -> None:
    """Start new peaks: the process's peak RSS (Linux: ``/proc/self/clear_refs``) and CUDA's max allocated."""
    with contextlib.suppress(OSError):  # elsewhere the CPU peak is the process's since it started
        Path("/proc/self/clear_refs").write_text("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak CPU resident set (``VmHWM``) and peak CUDA memory allocated since the last reset, in MiB."""
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                cpu = int(line.split()[1]) / 1024  # kB
    gpu = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return {"peak_cpu_rss_mb": cpu, "peak_gpu_mb": gpu}


def describe_device(device: torch.device) -> str:
    """'cpu: <model>, N cores, T torch threads' or 'cuda: <GPU name>'."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"cpu: {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
