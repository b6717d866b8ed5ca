"""Process-wide settings that make XLA:CPU steps faster; opt-in, as they touch the whole process.

XLA:CPU allocates each compiled step's temporary buffer with `malloc` on every call (61 MiB for
the seed CNN's train step at batch 128). glibc serves a block that large with a fresh `mmap` and
unmaps it when it is freed, so every step faults in and zeroes all of its pages again: measured
on a 2-core CPU, that doubled the CNN train step (34 -> 16 ms without it). PyTorch's CPU steps
pay the same toll for their large tensors (23 -> 13 ms), which is why its CPU tuning guides
suggest jemalloc or tcmalloc. `reuse_freed_memory` gets the same effect from glibc itself.
"""

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
TRIM_THRESHOLD = 1 << 30  # bytes of free heap kept mapped before glibc returns them to the OS


def reuse_freed_memory(single_arena: bool = False) -> bool:
    """Makes glibc keep freed memory for reuse instead of unmapping it, for this whole process.

    Sets `M_MMAP_MAX` to 0 (large blocks come from the heap, not from their own `mmap`) and
    `M_TRIM_THRESHOLD` to 1 GiB (up to that much freed heap stays mapped). The cost is a resident
    size that does not shrink back after a peak. Call it once, before the first step and before
    other threads start allocating; `train.py` and the benchmarks do.

    That covers blocks allocated on the main thread, where XLA:CPU runs cheap steps. Expensive
    ones run on a worker thread, whose own arena cannot hold a block over 64 MiB and maps it
    anyway (the CNN train step at batch 512 still faulted 174 MB per step). `single_arena=True`
    also sets `M_ARENA_MAX` to 1, so every thread allocates from the main heap: that step went
    from 117 to 65 ms. But all threads then share one heap lock, and a training loop whose
    prefetch thread allocates while the step runs slows down (`python train.py`, batch 32:
    7.9 -> 10.3 s), so only the benchmarks, which time steps alone, ask for it.

    Returns whether every setting took: False where the C library has no `mallopt` (macOS,
    musl), which changes nothing.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    if single_arena:
        settings.append((_M_ARENA_MAX, 1))
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])
