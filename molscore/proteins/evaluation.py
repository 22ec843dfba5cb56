"""One protein ensemble (diffusion samples, a simulation, or MD) against held-out MD, with the Go model's native
contacts: every metric of :mod:`molscore.proteins.metrics`, the folded fraction and, for trajectories, folding and
unfolding rates (issue 19).

Ensembles are given as lists of replicas, each ``(F_r, N, 3)`` nm (diffusion samples: one replica of independent
frames). Errors are bootstrap standard deviations over replicas (over frames for independent samples).
"""

import numpy as np

from molscore.proteins import metrics
from molscore.proteins.go_model import GoModel
from molscore.proteins.native_contacts import count_transitions, fraction_native_contacts

Q_BINS, RMSD_BINS, RMSD_RANGE = 50, 50, (0.0, 2.0)  # RMSD in nm


def _bootstrap(values_of, units: list, n_boot: int = 200, seed: int = 0) -> float:
    """sd of ``values_of(subset)`` over resamples of ``units`` with replacement (NaN for fewer than 2 units)."""
    if len(units) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    draws = [values_of([units[k] for k in rng.integers(len(units), size=len(units))]) for _ in range(n_boot)]
    return float(np.nanstd(draws, ddof=1))


def folded_fraction(q_replicas: list[np.ndarray], q_folded: float) -> dict:
    """Fraction of frames with Q > ``q_folded`` (the barrier of F(Q)), with its bootstrap error over replicas, or
    over frames when there is a single replica of independent frames."""
    pooled = np.concatenate(q_replicas)
    units = q_replicas if len(q_replicas) > 1 else list(pooled[:, None])
    err = _bootstrap(lambda parts: float((np.concatenate(parts) > q_folded).mean()), units)
    return {"p": float((pooled > q_folded).mean()), "err": err}


def rates(q_replicas: list[np.ndarray], frame_ps: float, q_folded: float, half_width: float = 0.1) -> dict:
    """Folding and unfolding rates (1/ns) from transitions counted with hysteresis around ``q_folded``:
    k_fold = folding events / time spent unfolded, k_unfold = unfolding events / time folded; bootstrap over
    replicas. Also the event counts (the convergence criterion asks for >= 20 of each)."""
    lo, hi = q_folded - half_width, q_folded + half_width

    def counts(parts):
        events = np.array([count_transitions(q, lo, hi) for q in parts]).reshape(-1, 2).sum(0)
        folded_ns = sum(float((q > q_folded).sum()) for q in parts) * frame_ps / 1000
        unfolded_ns = sum(float((q <= q_folded).sum()) for q in parts) * frame_ps / 1000
        return events, folded_ns, unfolded_ns

    def k(parts, which):
        events, folded_ns, unfolded_ns = counts(parts)
        time = unfolded_ns if which == 0 else folded_ns
        return events[which] / time if time > 0 else float("nan")

    events, _, _ = counts(q_replicas)
    return {
        "folding_events": int(events[0]), "unfolding_events": int(events[1]),
        "k_fold_per_ns": k(q_replicas, 0), "k_fold_err": _bootstrap(lambda p: k(p, 0), q_replicas),
        "k_unfold_per_ns": k(q_replicas, 1), "k_unfold_err": _bootstrap(lambda p: k(p, 1), q_replicas),
    }  # fmt: skip


def ensemble_metrics(
    replicas: list[np.ndarray], reference: list[np.ndarray], go: GoModel, tica, q_folded: float, frame_ps: float | None
) -> dict:
    """All metrics of ``replicas`` against ``reference`` (held-out MD replicas); ``frame_ps`` None for
    independent samples (no rates)."""
    frames, ref = np.concatenate(replicas), np.concatenate(reference)
    r0 = go.native_values()["contacts"]
    q = [fraction_native_contacts(x, go.contacts, r0) for x in replicas]
    q_ref = fraction_native_contacts(ref, go.contacts, r0)
    rmsd, rmsd_mirror = metrics.rmsd_to_native(frames, go.native)
    rmsd_ref, _ = metrics.rmsd_to_native(ref, go.native)
    out = {
        "frames": len(frames),
        "tica_js": metrics.tica_js(frames, ref, tica),
        "pseudo_dihedral_js": metrics.pseudo_dihedral_js(frames, ref),
        "pair_distance_js": metrics.pair_distance_js(frames, ref),
        "q": metrics.compare_1d(np.concatenate(q), q_ref, Q_BINS, (0.0, 1.0)) | {"mean": float(np.concatenate(q).mean())},
        "rmsd": metrics.compare_1d(rmsd, rmsd_ref, RMSD_BINS, RMSD_RANGE),
        "rmsd_native_nm": float(rmsd.mean()),
        "rmsd_mirror_nm": float(rmsd_mirror.mean()),
        "rg_nm": float(metrics.radius_of_gyration(frames).mean()),
        "folded": folded_fraction(q, q_folded),
    }  # fmt: skip
    if frame_ps is not None:
        out["rates"] = rates(q, frame_ps, q_folded)
    return out


def energy_agreement(learned_energy: np.ndarray, learned_forces: np.ndarray, go: GoModel, frames: np.ndarray) -> dict:
    """A learned energy model against the Go energy on the same frames: energy RMSE after removing the mean
    offset (an energy model is defined up to a constant), kJ/mol, and the Pearson correlation of all force
    components."""
    import torch

    pos = torch.as_tensor(frames, dtype=torch.float64).requires_grad_(True)
    energy = go.energy(pos)
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    e_go, f_go = energy.detach().numpy(), -grad.numpy()
    diff = np.asarray(learned_energy) - e_go
    return {
        "energy_rmse_kJ_per_mol": float(np.sqrt(((diff - diff.mean()) ** 2).mean())),
        "energy_sd_go_kJ_per_mol": float(e_go.std()),
        "force_correlation": float(np.corrcoef(np.ravel(learned_forces), f_go.ravel())[0, 1]),
    }
