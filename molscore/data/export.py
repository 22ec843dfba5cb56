"""Reduced copies of MD folders: a subset of the atoms, every stride-th frame, compressed, same layout.

Used to ship reference data with a system (``systems/alanine_dipeptide/reference_md``): the heavy atoms of
the 200 ns alanine-dipeptide set every 5 ps fit in a few MB and still give the backbone and heavy-atom
resolutions exactly (beads are atoms). The copy is an MD folder like the original (``topology.pdb`` +
``replica_XXX/chunk_000000.<fmt>`` + ``manifest.yaml``), so the pipeline reads it unchanged.
"""

from pathlib import Path

import mdtraj
import yaml

from molscore.data.resolution import select_beads
from molscore.data.trajectories import dcd_frames, load_frames, save_pdb
from molscore.files import atomic_write, write_text_atomic

EXPORT_FORMATS = (".xtc", ".dcd", ".h5")


def _frame_count(chunks: list[Path], topology_file: Path) -> int:
    """Frames in a replica's chunks: from the DCD headers (no coordinates read), else by loading them."""
    if all(c.suffix == ".dcd" for c in chunks):
        return sum(dcd_frames(c) for c in chunks)
    return len(load_frames(chunks, topology_file, atom_indices=[0]))


def export_md(
    source, dest, resolution: str = "heavy", stride: int = 1, fmt: str = ".xtc", complete_only: bool = False
) -> Path:
    """Write the beads of ``resolution`` of every replica in ``source``, every ``stride``-th frame, to ``dest``.

    Parameters
    ----------
    source : MD folder (``topology.pdb`` + ``replica_*/chunk_*``), e.g. written by ``generate_md``
    dest : output folder (created; files written atomically; replicas of ``source`` overwrite those of the same
        name, others are kept, so copies of replicas generated in several places merge)
    resolution : "all", "heavy", "backbone" or "calpha"
    stride : keep every stride-th frame (frame spacing becomes stride x the source's)
    fmt : ".xtc" (compressed, 0.001 nm precision), ".dcd" or ".h5"
    complete_only : copy only replicas that hold the manifest's full production length (a run still going, or
        one spread over sessions, ships its finished replicas; the others are listed as ``incomplete``)

    Returns
    -------
    dest as a Path; ``dest/manifest.yaml`` holds the source's manifest plus an ``export`` entry.
    """
    source, dest = Path(source), Path(dest)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format {fmt!r} unknown; choose from {EXPORT_FORMATS}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride = {stride}; need a positive integer")
    topology_file = source / "topology.pdb"
    if not topology_file.is_file():
        raise FileNotFoundError(f"{source} is not an MD folder (no topology.pdb); run workflows/generate_md.py first")
    replicas = sorted(d for d in source.glob("replica_*") if d.is_dir() and any(d.glob("chunk_*")))
    if not replicas:
        raise FileNotFoundError(f"{source} holds no replica_*/chunk_* files")
    beads = select_beads(mdtraj.load_topology(str(topology_file)), resolution)
    dest.mkdir(parents=True, exist_ok=True)
    manifest_file = source / "manifest.yaml"
    manifest = yaml.safe_load(manifest_file.read_text()) if manifest_file.is_file() else {}
    if complete_only and "length_ps" not in manifest:
        raise ValueError(f"complete_only needs {manifest_file} with length_ps (written by generate_md)")
    expected = round(manifest["length_ps"] / manifest.get("frame_interval_ps", 1.0)) if complete_only else None
    first, incomplete = None, []
    for replica in replicas:
        chunks = sorted(f for f in replica.glob("chunk_*") if f.suffix in (".dcd", ".xtc", ".h5"))
        if expected is not None and _frame_count(chunks, topology_file) < expected:
            incomplete.append(replica.name)
            continue
        traj = load_frames(chunks, topology_file, atom_indices=beads.indices)
        traj = traj[::stride]
        first = traj[0] if first is None else first
        with atomic_write(dest / replica.name / f"chunk_000000{fmt}") as tmp:
            traj.save(str(tmp), force_overwrite=True)
    if first is None:
        raise FileNotFoundError(f"{source}: no replica is complete yet ({len(incomplete)} running or stopped)")
    save_pdb(first, dest / "topology.pdb")
    manifest["export"] = {
        "source": str(source), "resolution": resolution, "stride": int(stride), "format": fmt,
        "n_atoms": beads.n_beads, "replicas": sorted(d.name for d in dest.glob("replica_*") if d.is_dir()),
        "frame_interval_ps": float(manifest.get("frame_interval_ps", 1.0)) * stride,
    }  # fmt: skip
    if incomplete:
        manifest["export"]["incomplete"] = incomplete
    write_text_atomic(dest / "manifest.yaml", yaml.safe_dump(manifest, sort_keys=False))
    return dest
