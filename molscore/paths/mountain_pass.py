"""The lowest mountain pass between two cells of a gridded energy surface (the minimum-energy-path barrier).

Among all paths of neighbouring cells from ``start`` to ``end``, the one whose highest cell is lowest (a minimax,
or bottleneck, path): Dijkstra's algorithm with "max" in place of "+". On an adiabatic dihedral scan this is the
barrier of the minimum-energy path, resolved to the grid.
"""

import heapq

import numpy as np


def mountain_pass(
    energies: np.ndarray, start: tuple[int, int], end: tuple[int, int], periodic: bool = True
) -> tuple[float, list[tuple[int, int]]]:
    """Barrier and cells of the lowest pass from ``start`` to ``end``.

    Parameters
    ----------
    energies : (n, m) energies on a grid, any unit
    start, end : grid indices (i, j)
    periodic : whether the grid wraps around in both directions (dihedrals)

    Returns
    -------
    the highest energy along the best path (same unit), and the path's cells from start to end
    """
    energies = np.asarray(energies, dtype=float)
    n, m = energies.shape
    if not np.isfinite(energies).all():
        raise ValueError("energies contain NaN or infinite values; rerun the scan points that failed")
    best = np.full((n, m), np.inf)
    parent: dict = {}
    best[start] = energies[start]
    queue = [(energies[start], start)]
    while queue:
        level, (i, j) = heapq.heappop(queue)
        if (i, j) == end:
            break
        if level > best[i, j]:
            continue
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            a, b = i + di, j + dj
            if periodic:
                a, b = a % n, b % m
            elif not (0 <= a < n and 0 <= b < m):
                continue
            new = max(level, energies[a, b])
            if new < best[a, b]:
                best[a, b], parent[(a, b)] = new, (i, j)
                heapq.heappush(queue, (new, (a, b)))
    path = [end]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return float(best[end]), path[::-1]
