"""A sampled path ensemble: unique paths with their Monte Carlo multiplicities, written as chunks as it grows.

Shooting keeps each chain's current path; after every move the current path counts once. The ensemble stores
each accepted path once (frames every ``save_every`` steps, the last frame always) and, per move and chain,
which path was current: path averages are weighted by how many moves each path was current. Chunks of new
paths are appended as ``chunk_#####.npz`` files, so an interrupted run keeps what it sampled.
"""

from pathlib import Path

import numpy as np
import torch

from molscore.files import atomic_write
from molscore.paths.path_batch import PathBatch


class PathEnsemble:
    """Unique paths, per-move bookkeeping and path statistics.

    Attributes
    ----------
    paths : list of ndarray (F_i, N, d), nm: saved frames of each unique path, in the precision of the paths
        sampled (float64 keeps what fitting a path sampler needs: BAOAB's draws are recovered from the positions)
    start_velocities : list of ndarray (N, d), nm/ps: the velocities at each path's first frame
    steps : list of int, path length in steps
    max_energy : list of float, the highest potential energy along the path at full resolution, kJ/mol (NaN if
        the force field gives no energy)
    chain, move : list of int, the chain and move that produced each path (move -1: initial path)
    from_initial : list of bool, whether the path shares frames with its chain's initial path (the initial paths, and
        paths that keep pieces of them: a two-way path keeps its shooting frame, a one-way path part of its predecessor)
    history : list of ndarray (C,) int, the index of each chain's current path after each move
    accepted : list of ndarray (C,) bool, per move
    decorrelated : ndarray (C,) int, decorrelated paths per chain (no frame in common with the previous one)
    evaluations, seconds : energy evaluations and wall time spent on moves, over every run (resumes included)
    """

    def __init__(self, n_chains: int, dt: float, save_every: int = 1):
        self.dt, self.save_every = float(dt), int(save_every)
        self.paths: list[np.ndarray] = []
        self.start_velocities: list[np.ndarray] = []
        self.steps: list[int] = []
        self.max_energy: list[float] = []
        self.chain: list[int] = []
        self.move: list[int] = []
        self.from_initial: list[bool] = []
        self.history: list[np.ndarray] = []
        self.accepted: list[np.ndarray] = []
        self.decorrelated = np.zeros(n_chains, dtype=np.int64)
        self.evaluations, self.seconds = 0, 0.0
        self._written = 0  # paths already in chunk files
        self._chunks = 0

    def add(self, batch: PathBatch, chains: np.ndarray, move: int, from_initial=None) -> np.ndarray:
        """Store the paths of ``batch`` (one per entry of ``chains``; ``from_initial`` (C,) bools: which share frames
        with their chain's initial path, default: all if ``move`` is -1, else none); returns their indices."""
        if from_initial is None:
            from_initial = np.full(len(chains), move < 0)
        first = len(self.paths)
        pos = batch.positions.detach().cpu().numpy()
        v0 = batch.velocities[0].detach().cpu().numpy()
        energies = batch.energies.detach().to("cpu", torch.float64).numpy()
        for i, chain in enumerate(chains):
            n = int(batch.lengths[i])
            frames = sorted(set(range(0, n + 1, self.save_every)) | {n})
            self.paths.append(pos[frames, i].copy())
            self.start_velocities.append(v0[i].copy())
            self.steps.append(n)
            e = energies[: n + 1, i]
            self.max_energy.append(float(np.max(e)) if np.isfinite(e).all() else float("nan"))
            self.chain.append(int(chain))
            self.move.append(int(move))
            self.from_initial.append(bool(from_initial[i]))
        return np.arange(first, len(self.paths))

    def record(self, current: np.ndarray, accepted: np.ndarray) -> None:
        """Book one move: the index of each chain's current path (C,) and which chains accepted (C,)."""
        self.history.append(np.asarray(current, dtype=np.int64).copy())
        self.accepted.append(np.asarray(accepted, dtype=bool).copy())

    @property
    def n_moves(self) -> int:
        return len(self.history)

    def weights(self, burn_in: int = 0, initial: bool = True) -> np.ndarray:
        """Multiplicity (n_paths,) of each unique path over the moves after ``burn_in`` (all chains); with
        ``initial=False`` the initial paths and the paths that keep frames of them (``from_initial``) get none: when
        the initial paths are not samples of the ensemble (e.g. pulled by a bias) and a chain has not left them yet."""
        if self.n_moves <= burn_in:
            raise ValueError(f"burn_in={burn_in} discards all {self.n_moves} moves; sample longer or lower it")
        counts = np.bincount(np.concatenate(self.history[burn_in:]), minlength=len(self.paths)).astype(float)
        return counts if initial else counts * ~np.asarray(self.from_initial, dtype=bool)

    def fixed_length_paths(self, burn_in: int = 0) -> tuple[PathBatch, np.ndarray, np.ndarray]:
        """The unique paths with weight after ``burn_in`` that a move produced as a :class:`PathBatch` (float64;
        velocities: the first frame's only, NaN elsewhere; e.g. to fit the learned path sampler), their weights and
        their chains (to hold out whole chains: paths of one chain share frames).
        The initial paths and the paths that keep frames of them are left out (often not samples of the ensemble,
        e.g. pulled by a bias; a fit would learn the bias). Needs every frame
        (``save_every = 1``) and paths of one length (a fixed-length ensemble)."""
        w = self.weights(burn_in, initial=False)
        if not w.any():
            raise ValueError(f"no path made by a move has weight after burn_in={burn_in}: sample longer")
        chosen = np.nonzero(w > 0)[0]
        steps = {self.steps[i] for i in chosen}
        if self.save_every != 1 or len(steps) != 1:
            raise ValueError(
                f"full paths of one length are needed (save_every={self.save_every}, lengths {sorted(steps)[:5]}): "
                "shoot with save_every=1 and fixed length"
            )
        pos = torch.as_tensor(np.stack([self.paths[i] for i in chosen], 1), dtype=torch.float64)
        vel = torch.full_like(pos, float("nan"))
        vel[0] = torch.as_tensor(np.stack([self.start_velocities[i] for i in chosen]), dtype=torch.float64)
        lengths = torch.full((len(chosen),), steps.pop(), dtype=torch.long)
        energies = torch.full(pos.shape[:2], float("nan"), dtype=torch.float64)
        ids = torch.full(pos.shape[:2], -1, dtype=torch.long)
        return PathBatch(pos, vel, energies, lengths, ids), w[chosen], np.asarray(self.chain)[chosen]

    def acceptance(self, burn_in: int = 0) -> float:
        return float(np.mean(self.accepted[burn_in:])) if self.accepted[burn_in:] else float("nan")

    def path_lengths(self) -> np.ndarray:
        """Path lengths (n_paths,) in time units (ps)."""
        return np.asarray(self.steps) * self.dt

    def summary(self, burn_in: int = 0) -> dict:
        """Acceptance, decorrelated paths, weighted mean / std of the path length (ps) and of the max energy."""
        w = self.weights(burn_in)
        lengths, emax = self.path_lengths(), np.asarray(self.max_energy)

        def mean_std(v):
            ok = np.isfinite(v) & (w > 0)
            if not ok.any():
                return float("nan"), float("nan")
            m = np.average(v[ok], weights=w[ok])
            return float(m), float(np.sqrt(np.average((v[ok] - m) ** 2, weights=w[ok])))

        return {
            "moves": self.n_moves,
            "chains": len(self.decorrelated),
            "acceptance": self.acceptance(burn_in),
            "unique paths": int((w > 0).sum()),
            "decorrelated paths": int(self.decorrelated.sum()),
            "path length ps": mean_std(lengths),
            "max energy kJ/mol": mean_std(emax),
        }

    def write_trajectory(self, path: str | Path, topology, burn_in: int = 0) -> Path:
        """All unique paths with weight after ``burn_in``, frame after frame, as one trajectory file (format by
        suffix, e.g. ``.dcd``, ``.xtc``; mdtraj; 2-D systems get z = 0) plus ``<path>.csv``: path index, first frame,
        frames, steps, weight.

        Parameters
        ----------
        topology : mdtraj.Topology of the frames (the system's)
        """
        import mdtraj

        path = Path(path)
        weights = self.weights(burn_in)
        chosen = np.nonzero(weights > 0)[0]
        frames = np.concatenate([self.paths[i] for i in chosen])
        if frames.shape[2] < 3:  # planar toy systems: z = 0
            frames = np.concatenate([frames, np.zeros((*frames.shape[:2], 3 - frames.shape[2]), frames.dtype)], 2)
        if topology.n_atoms != frames.shape[1]:
            raise ValueError(f"the topology has {topology.n_atoms} atoms, the paths {frames.shape[1]}")
        with atomic_write(path) as tmp:
            mdtraj.Trajectory(frames, topology).save(str(tmp))
        starts = np.cumsum([0] + [len(self.paths[i]) for i in chosen])[:-1]
        rows = ["path,first_frame,frames,steps,weight"] + [
            f"{i},{f},{len(self.paths[i])},{self.steps[i]},{weights[i]:g}" for i, f in zip(chosen, starts, strict=True)
        ]
        with atomic_write(path.with_suffix(path.suffix + ".csv")) as tmp:
            tmp.write_text("\n".join(rows) + "\n")
        return path

    # files -------------------------------------------------------------------------------------------
    def write_chunk(self, folder: Path) -> None:
        """Append the paths added since the last chunk as ``chunk_#####.npz`` (atomic)."""
        new = range(self._written, len(self.paths))
        if not len(new):
            return
        folder.mkdir(parents=True, exist_ok=True)
        frames = [self.paths[i] for i in new]
        data = {
            "frames": np.concatenate(frames),
            "start_velocities": np.stack([self.start_velocities[i] for i in new]),
            "offsets": np.cumsum([0] + [len(f) for f in frames]),
            "steps": np.asarray([self.steps[i] for i in new]),
            "max_energy": np.asarray([self.max_energy[i] for i in new]),
            "chain": np.asarray([self.chain[i] for i in new]),
            "move": np.asarray([self.move[i] for i in new]),
            "from_initial": np.asarray([self.from_initial[i] for i in new]),
        }
        with atomic_write(folder / f"chunk_{self._chunks:05d}.npz") as tmp:
            np.savez(tmp, **data)
        self._written = len(self.paths)
        self._chunks += 1

    def bookkeeping(self) -> dict:
        """History, acceptance and decorrelation counts as tensors (for a checkpoint)."""
        n = len(self.decorrelated)
        return {
            "history": torch.as_tensor(np.array(self.history, dtype=np.int64).reshape(-1, n)),
            "accepted": torch.as_tensor(np.array(self.accepted, dtype=bool).reshape(-1, n)),
            "decorrelated": torch.as_tensor(self.decorrelated),
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "written": self._written,
            "chunks": self._chunks,
        }

    @classmethod
    def restore(cls, folder: Path, bookkeeping: dict, dt: float, save_every: int, prune: bool = False) -> "PathEnsemble":
        """Rebuild an ensemble from its chunk files and :meth:`bookkeeping` (e.g. a shooting checkpoint's); chunks
        written after it are ignored, or removed with ``prune`` (when resuming the run that writes them; never on the
        folder of a run still going)."""
        out = cls(len(bookkeeping["decorrelated"]), dt, save_every)
        out._chunks = int(bookkeeping["chunks"])
        chunks = sorted(Path(folder).glob("chunk_*.npz"))
        if prune:
            for path in chunks[out._chunks :]:
                path.unlink()
        for path in chunks[: out._chunks]:
            with np.load(path) as data:
                offsets, frames = data["offsets"], data["frames"]  # each data[...] reads the file again: once
                out.paths += np.split(frames, offsets[1:-1])
                if "start_velocities" in data:
                    out.start_velocities += list(data["start_velocities"])
                else:  # chunks written before start velocities were kept
                    out.start_velocities += [np.full(frames.shape[1:], np.nan)] * (len(offsets) - 1)
                out.steps += data["steps"].tolist()
                out.max_energy += data["max_energy"].tolist()
                out.chain += data["chain"].tolist()
                out.move += data["move"].tolist()
                # chunks written before the flag was kept: only the initial paths are known to be from them
                out.from_initial += (data["from_initial"] if "from_initial" in data else data["move"] < 0).tolist()
        n = int(bookkeeping["written"])
        if len(out.paths) < n:
            raise ValueError(f"{folder}: the checkpoint counts {n} paths but the chunk files hold {len(out.paths)}")
        for name in ("paths", "start_velocities", "steps", "max_energy", "chain", "move", "from_initial"):
            setattr(out, name, getattr(out, name)[:n])
        out._written = n
        out.history = list(bookkeeping["history"].numpy())
        out.accepted = list(bookkeeping["accepted"].numpy())
        out.decorrelated = bookkeeping["decorrelated"].numpy().copy()
        out.evaluations, out.seconds = int(bookkeeping["evaluations"]), float(bookkeeping["seconds"])
        return out
