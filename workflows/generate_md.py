"""Reference MD data: independent OpenMM Langevin replicas in resumable DCD chunks.

The defaults make the alanine-dipeptide dataset SCIENCE.md section 4 asks for: 40 independent replicas x 5 ns
(200 ns, 1 ps frames, 1 fs timestep, no constraints, OBC implicit solvent, 300 K) after 100 ps equilibration
each. Measured on 2 CPU cores (Reference platform): about 2,900 ns/day with 2 processes (1,450 per process),
so about 1 h 45 min on an otherwise idle machine.
Rerunning the same command resumes a killed run; more ``--replicas`` or ``--ns`` extend a finished one.

    python workflows/generate_md.py --system alanine_dipeptide                 # ~1 h 45 min -> data/alanine_dipeptide
    python workflows/generate_md.py --system alanine_dipeptide --quick         # ~1 min -> data/alanine_dipeptide_quick
    python workflows/generate_md.py --system alanine_dipeptide --variant vacuum --replicas 8 --ns 1
    python workflows/generate_md.py --system alanine_dipeptide --replicas 200  # extend towards 1 us
    python workflows/generate_md.py --system alanine_dipeptide --export systems/alanine_dipeptide/reference_md \
        --export-resolution heavy --export-stride 5                          # the copy shipped with the system
    python workflows/generate_md.py --out /work/md/alanine_long --export-only \
        --export systems/alanine_dipeptide/reference_md_long --export-resolution all --export-stride 5
                                                                       # finished replicas of a run in progress

Output: ``<out>/topology.pdb``, ``<out>/replica_XXX/chunk_XXXXXX.dcd``, ``<out>/manifest.yaml`` and
``<out>/timing.yaml`` (see :mod:`molscore.interfaces.openmm_md`).
"""

import argparse
from pathlib import Path

from molscore.data.export import export_md
from molscore.interfaces.openmm_md import generate_md, replica_files
from molscore.system import load_system

QUICK = {"replicas": 4, "ns": 0.5, "equilibration_ps": 5.0, "chunk_frames": 100}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="alanine_dipeptide", help="folder name under systems/ or a path")
    parser.add_argument("--variant", default=None, help="variant of the system definition, e.g. vacuum")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default data/<system>[_<variant>][_quick])")
    parser.add_argument("--replicas", type=int, default=40, help="independent replicas (default 40)")
    parser.add_argument("--ns", type=float, default=5.0, help="production length per replica, ns (default 5)")
    parser.add_argument("--equilibration-ps", type=float, default=100.0, help="discarded per replica, ps (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; replica r uses (seed, r)")
    parser.add_argument("--first-replica", type=int, default=0, help="run only replicas from this index on")
    parser.add_argument("--platform", default="Reference", help="OpenMM platform: Reference (default), CPU or CUDA")
    parser.add_argument("--processes", type=int, default=None, help="worker processes (default: CPU cores)")
    parser.add_argument("--chunk-frames", type=int, default=1000, help="frames per DCD chunk (default 1000)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small dataset in ~1 min: {QUICK['replicas']} replicas x {QUICK['ns'] * 1000:g} ps after "
        f"{QUICK['equilibration_ps']:g} ps equilibration (overrides --replicas, --ns, --equilibration-ps)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--export", type=Path, default=None, help="also write a reduced copy of the data to this folder")
    parser.add_argument("--export-resolution", default="heavy", help="atoms of the copy: all, heavy, backbone, calpha")
    parser.add_argument("--export-stride", type=int, default=1, help="keep every n-th frame in the copy")
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="write the copy of what is on disk now (finished replicas only), "
        "without running MD: ships a run that goes on across sessions",
    )
    parser.add_argument("--export-format", default=".xtc", help="format of the copy: .xtc (default), .dcd or .h5")
    args = parser.parse_args(argv)
    if args.quick:
        args.replicas, args.ns = QUICK["replicas"], QUICK["ns"]
        args.equilibration_ps, args.chunk_frames = QUICK["equilibration_ps"], QUICK["chunk_frames"]
    if args.out is None:
        name = Path(args.system).name + (f"_{args.variant}" if args.variant else "") + ("_quick" if args.quick else "")
        args.out = Path("data") / name
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.export_only:
        if args.export is None:
            raise SystemExit("--export-only needs --export FOLDER")
        copy = export_md(args.out, args.export, args.export_resolution, args.export_stride, args.export_format, True)
        print(f"{copy}: finished replicas of {args.out} ({args.export_resolution} atoms, every {args.export_stride})")
        return args.out
    system = load_system(args.system, variant=args.variant)
    out = generate_md(
        system,
        args.out,
        replicas=args.replicas,
        length_ps=args.ns * 1000.0,
        seed=args.seed,
        platform=args.platform,
        equilibration_ps=args.equilibration_ps,
        chunk_frames=args.chunk_frames,
        processes=args.processes,
        progress=not args.no_progress,
        first_replica=args.first_replica,
    )
    print(f"{out}: {len(replica_files(out))} replica(s) of {args.ns:g} ns; topology {out / 'topology.pdb'}")
    if args.export is not None:
        copy = export_md(out, args.export, args.export_resolution, args.export_stride, args.export_format)
        print(f"{copy}: {args.export_resolution} atoms, every {args.export_stride} frame(s), {args.export_format}")
    return out


if __name__ == "__main__":  # the guard matters: worker processes are spawned and re-import this file
    main()
