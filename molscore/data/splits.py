"""Train / validation / test splits that hold out whole MD replicas, saved to disk and reproducible by seed.

Holding out replicas (not random frames) matters: frames of one trajectory are correlated and the slow
phi > 0 basin of alanine dipeptide sets the noise floor (SCIENCE.md section 4).
"""

from pathlib import Path

import numpy as np
import yaml

from molscore.data.resolution import Beads, select_beads
from molscore.data.trajectories import load_frames, save_pdb


def split_replicas(n_replicas: int, n_validation: int, n_test: int, seed: int) -> dict[str, list[int]]:
    """Assign replica indices to splits at random (seeded); every split gets at least one replica."""
    if n_validation < 1 or n_test < 1 or n_validation + n_test >= n_replicas:
        raise ValueError(
            f"{n_replicas} replicas cannot give {n_validation} validation and {n_test} test replicas plus at "
            "least one for training; generate more replicas or hold out fewer"
        )
    order = np.random.default_rng(seed).permutation(n_replicas).tolist()
    return {
        "test": sorted(order[:n_test]),
        "validation": sorted(order[n_test : n_test + n_validation]),
        "train": sorted(order[n_test + n_validation :]),
    }


def write_molecular_splits(
    replica_files: list[list[Path]],
    topology_file: Path,
    out_dir: Path,
    resolution: str,
    n_validation_replicas: int = 1,
    n_test_replicas: int = 2,
    stride: int = 1,
    seed: int = 0,
) -> Beads:
    """Load each replica at ``resolution`` and write the splits to ``out_dir``.

    Files: ``{train,validation,test}.npy`` (frames, beads, 3) nm; ``{split}_replica.npy`` (frames,) replica
    of each frame; ``beads.yaml``; ``beads.pdb`` (topology of the beads, for viewers); ``splits.yaml``.
    """
    import mdtraj

    topology = mdtraj.load_topology(str(topology_file))
    beads = select_beads(topology, resolution)
    splits = split_replicas(len(replica_files), n_validation_replicas, n_test_replicas, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, replicas in splits.items():
        frames, owner = [], []
        for r in replicas:
            xyz = load_frames(replica_files[r], topology, stride=stride, atom_indices=beads.indices).xyz
            frames.append(xyz)
            owner.append(np.full(len(xyz), r))
        np.save(out_dir / f"{name}.npy", np.concatenate(frames).astype(np.float32))
        np.save(out_dir / f"{name}_replica.npy", np.concatenate(owner))
    (out_dir / "beads.yaml").write_text(yaml.safe_dump(beads.to_dict(), sort_keys=False))
    (out_dir / "splits.yaml").write_text(yaml.safe_dump({"seed": seed, "stride": stride, "replicas": splits}))
    save_pdb(mdtraj.load(str(topology_file)).atom_slice(beads.indices), out_dir / "beads.pdb")
    return beads
