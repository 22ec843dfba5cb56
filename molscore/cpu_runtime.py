"""CPU settings chosen on purpose for training and simulation: torch threads and glibc's allocator.

Threads: small models run fastest on one thread; on a busy 2-core machine, 2 threads made training 20x slower
(OpenMP oversubscription, README). Allocator: a training step of a graph network on a protein allocates tensors of
tens of MB (a hidden vector per pair) and frees them at the end of the step. glibc serves blocks above its mmap
threshold with fresh ``mmap`` pages and trims the heap after large frees, so every step page-faults all of that
memory again; keeping freed memory in the heap made the 48-bead radius-graph step 1.7-2x faster (measured in
``workflows/benchmarks/protein_scaling.py``'s notes). Tiny molecules are unaffected.
"""

import ctypes
import ctypes.util

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit machines


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 32 MB from the heap and never trim it; True where that took effect (glibc
    on Linux), False elsewhere (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def configure_cpu(threads: int = 1) -> None:
    """``threads`` intra-op torch threads (default 1: see the module docstring) and :func:`keep_freed_memory`."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    keep_freed_memory()
