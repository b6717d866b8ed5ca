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


def reuse_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse instead of unmapping it, for this whole process.

    Sets `M_MMAP_MAX` to 0 (large blocks come from the heap, not from their own `mmap`),
    `M_TRIM_THRESHOLD` to 1 GiB (up to that much freed heap stays mapped) and `M_ARENA_MAX` to 1:
    a thread's own arena cannot hold a block over 64 MiB and maps it anyway, and XLA allocates
    from its worker threads too (the CNN train step at batch 512 still faulted 174 MB per step
    without it). The cost is a resident size that does not shrink back after a peak, and one
    heap lock for all threads. Call it once, before the first step and before other threads
    start allocating; `train.py` and the benchmarks do. Returns whether every setting took:
    False where the C library has no `mallopt` (macOS, musl), which changes nothing.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, 1))
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])
