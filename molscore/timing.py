"""Wall-clock timing of a callable for the benchmark scripts (``workflows/benchmarks/``)."""

import statistics
import time


def median_seconds(fn, warmup: int = 3, repeats: int = 30) -> float:
    """Median wall time (s) of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones (CPU: the caller
    synchronises a GPU inside ``fn`` if it needs to)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)
