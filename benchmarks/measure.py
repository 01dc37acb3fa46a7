"""How the benchmarks measure: the device's name, synchronised wall clocks, peak memory and the run's time budget.

Peak memory of a call (`peak_mib`) has one definition: the most memory the call allocates above what was allocated
before it (weights and inputs excluded, its output included). On CUDA that is `torch.cuda.max_memory_allocated`; on
a CPU it is the peak of live CPU tensor storage created during the call, tracked by `PeakTensorMemory` (the CPU
analogue of `max_memory_allocated`; kernels' private scratch buffers are not seen, nor is compiled code, which
bypasses it). Tables that report an absolute device peak (weights included) say so in their own docstring.
"""

import gc
import platform
import statistics
import time
import traceback
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

START = time.perf_counter()  # the scripts import this module first: their time budget counts from here

# `--dtype` names, short and long
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model with the torch thread count (both change CPU timings)."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# Time
# ----------------------------------------------------------------------------------------------------------------


def timed(function, device: str):
    """`(function(), seconds)`, the device synchronised before and after so that queued kernels count."""
    synchronize(device)
    start = time.perf_counter()
    output = function()
    synchronize(device)
    return output, time.perf_counter() - start


def time_interleaved(steps: dict, device: str, warmup: int, repeats: int) -> dict:
    """Median seconds per step; the candidates alternate every repetition so load changes hit all alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
        synchronize(device)
    samples = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            samples[name].append(timed(step, device)[1])
    return {name: statistics.median(values) for name, values in samples.items()}


def time_interleaved_or_alone(steps: dict, device: str, warmup: int, repeats: int) -> dict:
    """`time_interleaved`, and where that raises (a compile error at the first call, out of memory) each step alone,
    so that one candidate's failure does not hide the others' numbers. Values: seconds, or the error as text."""
    try:
        return time_interleaved(steps, device, warmup, repeats)
    except Exception:  # noqa: BLE001 - printed, then every step gets its own try
        traceback.print_exc()
    times = {}
    for name, step in steps.items():
        try:
            times.update(time_interleaved({name: step}, device, warmup, repeats))
        except Exception as error:  # noqa: BLE001 - the failure becomes the row
            times[name] = f"{type(error).__name__}: {str(error)[:60]}"
        free_memory(device)
    return times


class TimeBudget:
    """Seconds left of `--time-budget` since the process started; cases that would overrun it are skipped."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - START

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - self.elapsed()

    def allows(self, needed_s: float = 0.0) -> bool:
        return self.left() > needed_s


# ----------------------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------------------


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of CPU tensor storage alive at once, counting storages created while the mode is active.

    Only CPU storages count: a CUDA (or meta) storage lives in another address space, so its `data_ptr` could
    collide with a CPU key, and its bytes are not the host memory this measures.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self.live = set()

    def _release(self, key: int, num_bytes: int) -> None:
        self.live.discard(key)
        self.current -= num_bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            key, num_bytes = storage.data_ptr(), storage.nbytes()
            if num_bytes == 0 or key in self.live:  # views and in-place results share a counted storage
                continue
            self.live.add(key)
            self.current += num_bytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key, num_bytes)  # runs when the storage is freed
        return output


def peak_mib(function, device: str) -> float:
    """MiB that `function()` allocates at its peak above what is allocated before it (the module docstring's
    definition: `max_memory_allocated` on CUDA, `PeakTensorMemory` on a CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        function()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - baseline) / 2**20
    with PeakTensorMemory() as tracker:
        function()
    return tracker.peak / 2**20
