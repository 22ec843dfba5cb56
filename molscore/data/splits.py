"""Train / validation / test splits that hold out whole MD replicas, saved to disk and reproducible by seed.

Holding out replicas (not random frames) matters: frames of one trajectory are correlated and the slow
phi > 0 basin of alanine dipeptide sets the noise floor (SCIENCE.md section 4).
"""

from pathlib import Path

import numpy as np
import yaml

from molscore.data.resolution import Beads, select_beads
from molscore.data.trajectories import load_frames, save_pdb


def _assign(n_replicas: int, sizes: dict[str, int], seed: int) -> dict[str, list[int]]:
    """A seeded permutation of the replicas cut into ``sizes`` in order; the rest is "train"."""
    order = np.random.default_rng(seed).permutation(n_replicas).tolist()
    bounds = np.cumsum([0, *sizes.values()]).tolist()
    splits = {name: sorted(order[a:b]) for name, a, b in zip(sizes, bounds[:-1], bounds[1:], strict=True)}
    return splits | {"train": sorted(order[bounds[-1] :])}


def split_replicas(n_replicas: int, n_validation: int, n_test: int, seed: int) -> dict[str, list[int]]:
    """Assign replica indices to splits at random (seeded); every split gets at least one replica."""
    if n_validation < 1 or n_test < 1 or n_validation + n_test >= n_replicas:
        raise ValueError(
            f"{n_replicas} replicas cannot give {n_validation} validation and {n_test} test replicas plus at "
            "least one for training; generate more replicas or hold out fewer"
        )
    return _assign(n_replicas, {"test": n_test, "validation": n_validation}, seed)


def _split_train_validation(n_replicas: int, n_validation: int, seed: int) -> dict[str, list[int]]:
    """Training and validation replicas of one MD folder when the test replicas come from another."""
    if n_validation < 1 or n_validation >= n_replicas:
        raise ValueError(
            f"{n_replicas} training-source replicas cannot give {n_validation} validation replicas plus at least "
            "one for training; hold out fewer (data.n_validation_replicas) or generate more"
        )
    return _assign(n_replicas, {"validation": n_validation}, seed)


def _bead_names(beads: Beads) -> list[str]:
    return [f"{a.residue.name}:{a.name}" for a in beads.topology.atoms]


def write_molecular_splits(
    replica_files: list[list[Path]],
    topology_file: Path,
    out_dir: Path,
    resolution: str,
    n_validation_replicas: int = 1,
    n_test_replicas: int = 2,
    stride: int = 1,
    seed: int = 0,
    test_files: list[list[Path]] | None = None,
    test_topology_file: Path | None = None,
) -> Beads:
    """Load each replica at ``resolution`` and write the splits to ``out_dir``.

    Files: ``{train,validation,test}.npy`` (frames, beads, 3) nm; ``{split}_replica.npy`` (frames,) replica
    of each frame; ``beads.yaml``; ``beads.pdb`` (topology of the beads, for viewers); ``splits.yaml``.
    With ``test_files`` (the replicas of a second MD folder, topology ``test_topology_file``), every one of
    them is the test split and ``replica_files`` give training and validation only (``n_test_replicas`` unused):
    test replicas that no training frame ever seeded. Their beads must be the same atoms in the same order.
    """
    import mdtraj

    topology = mdtraj.load_topology(str(topology_file))
    beads = select_beads(topology, resolution)
    sources = {"train": (replica_files, topology, beads), "validation": (replica_files, topology, beads)}
    if test_files is None:
        splits = split_replicas(len(replica_files), n_validation_replicas, n_test_replicas, seed)
        sources["test"] = sources["train"]
    else:
        test_topology = mdtraj.load_topology(str(test_topology_file))
        test_beads = select_beads(test_topology, resolution)
        if _bead_names(test_beads) != _bead_names(beads):
            raise ValueError(
                f"the test MD's {resolution} beads ({test_topology_file}: {_bead_names(test_beads)[:6]} ...) are "
                f"not the training MD's ({topology_file}: {_bead_names(beads)[:6]} ...): give MD of one molecule"
            )
        splits = _split_train_validation(len(replica_files), n_validation_replicas, seed)
        splits["test"] = list(range(len(test_files)))
        sources["test"] = (test_files, test_topology, test_beads)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, replicas in splits.items():
        files, top, selected = sources[name]
        frames, owner = [], []
        for r in replicas:
            xyz = load_frames(files[r], top, stride=stride, atom_indices=selected.indices).xyz
            frames.append(xyz)
            owner.append(np.full(len(xyz), r))
        np.save(out_dir / f"{name}.npy", np.concatenate(frames).astype(np.float32))
        np.save(out_dir / f"{name}_replica.npy", np.concatenate(owner))
    (out_dir / "beads.yaml").write_text(yaml.safe_dump(beads.to_dict(), sort_keys=False))
    record = {"seed": seed, "stride": stride, "replicas": splits}
    if test_files is not None:
        record["test_source"] = str(Path(test_topology_file).parent)
    (out_dir / "splits.yaml").write_text(yaml.safe_dump(record))
    save_pdb(mdtraj.load(str(topology_file)).atom_slice(beads.indices), out_dir / "beads.pdb")
    return beads
