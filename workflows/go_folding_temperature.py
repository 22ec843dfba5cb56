"""Folding temperature of a C-alpha Go model from a temperature scan (issue 19; SCIENCE.md section 7).

At each temperature, independent OpenMM Langevin replicas of the system's Go model start from the native
structure (resumable DCD chunks, :func:`molscore.interfaces.openmm_md.generate_md`, one folder per temperature).
Per temperature it reports the mean fraction of native contacts <Q>, the folded fraction (Q above the barrier of
the pooled F(Q)), the potential-energy heat capacity C_V / k_B = var(E) / (k_B T)^2 and the folding / unfolding events.
Tf is where the folded fraction crosses 1/2 (linear interpolation) and, beside it, the C_V peak. Near Tf with
few events per replica the folded fraction still depends on the native start: the table counts the events so
that an unconverged temperature shows. Writes ``<out>/folding_temperature.md``, ``.json`` and ``.png``.

    python workflows/go_folding_temperature.py                                  # t4_lysozyme_go, 8 temperatures
    python workflows/go_folding_temperature.py --temperatures 260 280 300 --ns 20 --replicas 4
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from molscore.files import write_text_atomic
from molscore.interfaces.openmm_md import generate_md, go_model, load_md
from molscore.proteins.native_contacts import count_transitions, fraction_native_contacts, free_energy_barrier
from molscore.system import load_system
from molscore.units import kT_from_temperature

BOLTZMANN = kT_from_temperature(1.0)  # kJ/mol/K


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="t4_lysozyme_go", help="Go system (folder under systems/ or a path)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[200, 220, 240, 260, 280, 300, 320, 340])
    parser.add_argument("--replicas", type=int, default=2, help="replicas per temperature (default 2)")
    parser.add_argument("--ns", type=float, default=10.0, help="production per replica, ns (default 10)")
    parser.add_argument("--equilibration-ps", type=float, default=500.0, help="discarded per replica (default 500)")
    parser.add_argument("--platform", default="CPU", help="OpenMM platform (default CPU)")
    parser.add_argument("--processes", type=int, default=None, help="worker processes (default: CPU cores)")
    parser.add_argument("--out", type=Path, default=Path("runs/go_folding_temperature"))
    return parser.parse_args(argv)


def scan(args) -> dict:
    system = load_system(args.system)
    model = go_model(system)
    r0 = model.native_values()["contacts"]
    rows = []
    for temperature in sorted(args.temperatures):
        folder = args.out / f"T_{temperature:g}"
        generate_md(dataclasses.replace(system, temperature=float(temperature)), folder, args.replicas, args.ns * 1000,
                    platform=args.platform, equilibration_ps=args.equilibration_ps, processes=args.processes)  # fmt: skip
        replicas = [traj.xyz.astype(np.float64) for traj in load_md(folder)]
        q = [fraction_native_contacts(xyz, model.contacts, r0) for xyz in replicas]
        with torch.no_grad():
            energy = np.concatenate([model.energy(torch.as_tensor(xyz)).numpy() for xyz in replicas])
        rows.append({"temperature_K": float(temperature), "q": q, "energy": energy})
    q_barrier, bimodal = free_energy_barrier(np.concatenate([q for row in rows for q in row["q"]]))
    for row in rows:
        pooled = np.concatenate(row["q"])
        events = [count_transitions(q, q_barrier - 0.1, q_barrier + 0.1) for q in row["q"]]
        row.update({
            "mean_q": float(pooled.mean()), "folded": float((pooled > q_barrier).mean()),
            "heat_capacity_kB": float(row["energy"].var() / (BOLTZMANN * row["temperature_K"]) ** 2),
            "folding_events": int(sum(e[0] for e in events)), "unfolding_events": int(sum(e[1] for e in events)),
            "frames": len(pooled),
        })  # fmt: skip
    temperatures = np.array([row["temperature_K"] for row in rows])
    folded = np.array([row["folded"] for row in rows])
    crossing = np.nonzero((folded[:-1] >= 0.5) & (folded[1:] < 0.5))[0]
    tf = None
    if len(crossing):
        k = int(crossing[0])
        weight = (folded[k] - 0.5) / (folded[k] - folded[k + 1])
        tf = float(temperatures[k] + weight * (temperatures[k + 1] - temperatures[k]))
    cv_peak = float(temperatures[int(np.argmax([row["heat_capacity_kB"] for row in rows]))])
    return {"system": system.name, "eps_kJ_per_mol": model.eps, "n_beads": model.n_beads, "contacts": len(model.contacts),
            "q_barrier": q_barrier, "bimodal": bimodal, "tf_K": tf, "cv_peak_K": cv_peak, "rows": rows,
            "settings": {"replicas": args.replicas, "ns": args.ns, "equilibration_ps": args.equilibration_ps,
                         "timestep_ps": system.md["timestep"], "friction_per_ps": system.md["friction"],
                         "bead_mass_amu": float(system.masses[0])}}  # fmt: skip


def report(result: dict, out: Path) -> str:
    rows = result["rows"]
    lines = [
        f"# Folding temperature of {result['system']} ({result['n_beads']} beads, {result['contacts']} contacts, "
        f"eps = {result['eps_kJ_per_mol']:g} kJ/mol)",
        "",
        "| T (K) | <Q> | folded | C_V (k_B) | folding events | unfolding events | frames |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['temperature_K']:g} | {row['mean_q']:.3f} | {row['folded']:.3f} | "
                     f"{row['heat_capacity_kB']:.1f} | {row['folding_events']} | {row['unfolding_events']} | "
                     f"{row['frames']} |")  # fmt: skip
    tf = f"{result['tf_K']:.1f} K" if result["tf_K"] is not None else "not bracketed by the scan"
    s = result["settings"]
    lines += [
        "",
        f"Tf (folded fraction = 1/2): {tf}; C_V peak at {result['cv_peak_K']:g} K. Folded: Q > {result['q_barrier']:.3f}, "
        f"the barrier of the pooled F(Q) ({'bimodal' if result['bimodal'] else 'NOT bimodal: no barrier found'}); "
        f"events counted with hysteresis +-0.1 around it.",
        f"{s['replicas']} replicas x {s['ns']:g} ns per temperature after {s['equilibration_ps']:g} ps, all started native; "
        f"timestep {s['timestep_ps']} ps, friction {s['friction_per_ps']} /ps, bead mass {s['bead_mass_amu']:g} amu.",
    ]
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "folding_temperature.md", text)
    slim = {**result, "rows": [{k: v for k, v in row.items() if k not in ("q", "energy")} for row in rows]}
    write_text_atomic(out / "folding_temperature.json", json.dumps(slim, indent=1))
    _plot(result, out / "folding_temperature.png")
    return text


def _plot(result: dict, path: Path) -> None:
    fig = Figure(figsize=(12, 3.8))
    FigureCanvasAgg(fig)
    ax_f, ax_q, ax_c = fig.subplots(1, 3)
    temperatures = [row["temperature_K"] for row in result["rows"]]
    for row in result["rows"]:
        p, edges = np.histogram(np.concatenate(row["q"]), bins=40, range=(0, 1), density=True)
        with np.errstate(divide="ignore"):
            ax_f.plot(0.5 * (edges[1:] + edges[:-1]), -np.log(p), label=f"{row['temperature_K']:g} K")
    ax_f.axvline(result["q_barrier"], color="k", ls=":", lw=0.8)
    ax_f.set(xlabel="Q", ylabel="F(Q) / kT", title="free energy of Q")
    ax_f.legend(fontsize=7)
    ax_q.plot(temperatures, [row["folded"] for row in result["rows"]], "o-", label="folded fraction")
    ax_q.plot(temperatures, [row["mean_q"] for row in result["rows"]], "s--", label="<Q>")
    ax_q.axhline(0.5, color="k", ls=":", lw=0.8)
    ax_q.set(xlabel="T (K)", title=f"Tf = {result['tf_K']:.0f} K" if result["tf_K"] else "Tf not bracketed")
    ax_q.legend(fontsize=7)
    ax_c.plot(temperatures, [row["heat_capacity_kB"] for row in result["rows"]], "o-")
    ax_c.set(xlabel="T (K)", ylabel="C_V / k_B (potential energy)", title="heat capacity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = scan(args)
    print(report(result, args.out))
    return result


if __name__ == "__main__":
    main()
