"""At which diffusion times does an alanine-dipeptide model go wrong? Two measurements along t, one table.

1. Mirror gap (:func:`molscore.analysis.chirality.mirror_gaps`): held-out MD frames noised to t; the model's
   E(mirror x_t) - E(x_t) against the empirical noised density's log q_t(x_t) - log q_t(mirror x_t) (training
   frames as centres), in kT. A model that falls short of the data at mid t has lost the molecule's handedness
   there.
2. Partial denoising (:func:`molscore.sampling.denoise`): held-out frames noised to t_start, reverse SDE with the
   model to t_min; the phi > 0 population of the output against MD's. The smallest t_start at which it departs
   from MD's is where the model's basin populations go wrong.

    python workflows/diagnostics/chirality_by_time.py runs/alanine_dipeptide/heavy/energy_fp

reads ``<run>/model.safetensors`` and the frames in ``<run>/data`` (the workflow's split), writes
``<run>/diagnostics/chirality_by_time.{json,md,png}``.
"""

import argparse
import json
from pathlib import Path

import mdtraj
import numpy as np
import torch

from molscore.analysis.chirality import mirror_gaps
from molscore.analysis.collective_variables import compute_cvs
from molscore.analysis.plots import line_plot
from molscore.analysis.report import write_table
from molscore.cpu_runtime import configure_cpu
from molscore.models import DiffusionModel
from molscore.sampling import denoise
from molscore.system import load_system

GAP_TIMES = (0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6)
DENOISE_TIMES = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 1.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a variant's run folder (holds model.safetensors and data/)")
    p.add_argument("--frames", type=int, default=2000, help="held-out frames noised per time")
    p.add_argument("--centres", type=int, default=20000, help="training frames in the empirical density")
    p.add_argument("--sample-steps", type=int, default=300, help="grid of the partial denoising (EDM, full range)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def pick(frames: np.ndarray, n: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.as_tensor(frames[rng.choice(len(frames), size=min(n, len(frames)), replace=False)])


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    configure_cpu(args.threads)
    model_file, data = args.run / "model.safetensors", args.run / "data"
    for needed in (model_file, data / "test.npy", data / "train.npy", data / "beads.pdb"):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: pass a finished variant folder of workflows/alanine_dipeptide.py")
    model = DiffusionModel.load(model_file, dtype=torch.float64)
    rng = np.random.default_rng(args.seed)
    test, train = pick(np.load(data / "test.npy"), args.frames, rng), pick(np.load(data / "train.npy"), args.centres, rng)
    topology = mdtraj.load_topology(str(data / "beads.pdb"))
    cvs = load_system("alanine_dipeptide").collective_variables

    def phi_positive(xyz) -> float:
        return float((compute_cvs(np.asarray(xyz, dtype=np.float32), topology, cvs, ["phi"])[:, 0] > 0).mean())

    gaps = {row["t"]: row for row in mirror_gaps(model, test, train, GAP_TIMES, seed=args.seed)}
    md = phi_positive(test)
    rows = []
    for t in sorted(set(GAP_TIMES) | set(DENOISE_TIMES)):
        row = {"t": t}
        if t in gaps:
            g = gaps[t]
            row |= {"sigma": round(g["sigma"], 3), "mirror gap model (kT)": round(g["model"], 2),
                    "mirror gap data (kT)": round(g["data"], 2)}  # fmt: skip
        if t in DENOISE_TIMES:
            out = denoise(model, test.double(), t, args.sample_steps, seed=args.seed)
            row["phi>0 denoised from t"] = round(phi_positive(out), 4)
        rows.append(row)
        print(row, flush=True)
    out_dir = args.run / "diagnostics"
    out_dir.mkdir(exist_ok=True)
    record = {"run": str(args.run), "frames": len(test), "centres": len(train), "phi>0 MD (these frames)": md, "rows": rows}
    (out_dir / "chirality_by_time.json").write_text(json.dumps(record, indent=1))
    write_table(rows, out_dir / "chirality_by_time")
    gap_rows = [r for r in rows if "sigma" in r]
    den_rows = [r for r in rows if "phi>0 denoised from t" in r]
    line_plot(
        {
            "model mirror gap / 10 kT": ([r["t"] for r in gap_rows], [r["mirror gap model (kT)"] / 10 for r in gap_rows]),
            "data mirror gap / 10 kT": ([r["t"] for r in gap_rows], [r["mirror gap data (kT)"] / 10 for r in gap_rows]),
            "phi>0 denoised from t": ([r["t"] for r in den_rows], [r["phi>0 denoised from t"] for r in den_rows]),
            "phi>0 MD": ([0.0, 1.0], [md, md]),
        },
        out_dir / "chirality_by_time.png",
        "diffusion time t",
        "gap / 10 kT; phi > 0 fraction",
        title=f"{args.run.name}: where the model loses the molecule's handedness",
    )
    print(f"MD phi > 0 in these frames: {md:.4f}; table {out_dir / 'chirality_by_time.md'}")
    return rows


if __name__ == "__main__":
    main()
