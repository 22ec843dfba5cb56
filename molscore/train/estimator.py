"""``ScoreEstimator(...).fit(data) -> self``, ``fetch_model() -> DiffusionModel`` (deeptime style).

Trains a score or energy model by denoising score matching, optionally with the Fokker-Planck regulariser
and as a mixture of time experts (trained one after another from high t to low t; FP only on the
small-t energy expert). Every step draws its batch, times and noise from a generator seeded by
(seed, step), so a run resumed from a checkpoint continues exactly as if it had never stopped.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from molscore.diffusion.sde import VPSDE
from molscore.geometry import remove_centroid
from molscore.models.diffusion_model import DiffusionModel
from molscore.models.priors import Prior
from molscore.models.spec import ModelSpec, build_score_model, load_weights
from molscore.train.checkpoint import load_checkpoint, save_checkpoint
from molscore.train.ema import EMA
from molscore.train.losses import loss_terms
from molscore.train.time_sampling import TIME_SAMPLINGS, sample_times


@dataclass
class TrainConfig:
    """Optimisation settings.

    steps : total optimiser steps (a mixture splits them over its experts by ``expert_step_fractions``)
    fp_weight : alpha_FP of the Fokker-Planck term (0 switches it off)
    fp_fraction : share of each batch that also gets the FP residual (its cost scales with it)
    fp_step : finite-difference step of the Hutchinson divergence, relative to sigma(t)
    time_sampling : p(t) of the training times within each stage's interval, "uniform" or "log_sigma"
        (:mod:`molscore.train.time_sampling`: most samples at small t, where the force field lives)
    uniform_time_fraction : with "log_sigma", the share of times drawn uniformly
    log_sigma_min : with "log_sigma", the lowest noise level of the log-uniform part (:func:`sample_times`)
    fp_time_sampling : p(t) of the FP subset of each batch ("uniform", as in the reference work, or "log_sigma")
    fp_group : FP samples per shared time; k > 1 penalises the spread of the residual over x at each t instead
        of its square (:func:`~molscore.train.losses.loss_terms`), so the energy need not learn its normaliser
    fp_sigma_power : p of the per-sample FP weight sigma(t)^p. The residual grows like beta D / sigma^2 as t -> 0
        (measured: Var_x R / D^2 ~ 1e4 at t < 1e-3 against ~1 at t > 0.05 for a good DSM model), so with p = 0 the
        few smallest-t samples set the whole FP term and training trades DSM accuracy for them; p = 4 makes it a
        relative error at every t
    expert_step_fractions : relative step counts of the experts, from the LARGEST-t expert down
    expert_warm_start : each expert starts from the trained weights of the expert above it in t (the small-t
        expert inherits the torsional free energy learned at sigma ~ 0.3, where DSM sees it clearly)
    scale : data scale in nm (None: the std of the centred training data)
    max_minutes : wall-clock budget of one ``fit`` call; when it runs out, training checkpoints and stops
        (``stopped_early`` is set) and a later call resumes towards ``steps``
    fit_steps_to_budget : with ``max_minutes``, time one step of each stage before training and lower ``steps``
        so the whole schedule (learning-rate decay, every expert of a mixture) fits the budget; the planned
        count is kept in the checkpoint, so a resumed run follows the same schedule
    """

    steps: int = 10_000
    batch_size: int = 128
    learning_rate: float = 3e-4
    final_learning_rate: float = 1e-5
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float | None = 100.0
    fp_weight: float = 0.0
    fp_fraction: float = 1.0
    fp_step: float = 1e-2
    time_sampling: str = "uniform"
    uniform_time_fraction: float = 0.25
    log_sigma_min: float = 0.01
    fp_time_sampling: str = "uniform"
    fp_group: int = 1
    fp_sigma_power: float = 0.0
    expert_step_fractions: list[float] = field(default_factory=lambda: [1.0, 1.0, 4.0])
    expert_warm_start: bool = True
    scale: float | None = None
    checkpoint_every: int = 1000
    validation_every: int = 500
    max_minutes: float | None = None
    fit_steps_to_budget: bool = False
    seed: int = 0


RESUMABLE_KEYS = ("steps", "max_minutes", "fit_steps_to_budget", "checkpoint_every", "validation_every")
"""Settings a resumed training may change: more ``steps`` run after the saved schedule at the final learning
rate (on the last, small-t expert of a mixture); the others only change when the run stops or logs."""


def check_resumable(saved: dict, config: TrainConfig) -> None:
    """Raise ValueError naming every setting of ``config`` that differs from the checkpoint's ``saved`` one in a
    way resuming cannot honour (any key but :data:`RESUMABLE_KEYS`, or fewer steps than saved)."""
    now = asdict(config)
    changed = [
        f"train.{key}: {saved[key]!r} in the checkpoint, {value!r} now"
        for key, value in now.items()
        if key not in RESUMABLE_KEYS and key in saved and saved[key] != value
    ]
    if now["steps"] < saved.get("steps", now["steps"]):
        changed.append(f"train.steps: {saved['steps']} in the checkpoint, {now['steps']} now (fewer cannot be resumed)")
    if changed:
        raise ValueError(
            "the training checkpoint was written with other settings: " + "; ".join(changed) + ". Resume with the "
            "checkpoint's settings (only more steps, max_minutes, checkpoint_every and validation_every may change), "
            "or start afresh: molscore train CONFIG --overwrite, or another run_dir"
        )


class ScoreEstimator:
    """Fits a :class:`DiffusionModel` to equilibrium samples.

    Parameters
    ----------
    spec : model architecture
    config : optimisation settings
    sde : diffusion process
    device, dtype : where and in what precision to train
    """

    def __init__(
        self,
        spec: ModelSpec,
        config: TrainConfig | None = None,
        sde: VPSDE | None = None,
        device="cpu",
        dtype=torch.float32,
    ):
        self.spec, self.config, self.sde = spec, config or TrainConfig(), sde or VPSDE()
        for key in ("time_sampling", "fp_time_sampling"):
            if getattr(self.config, key) not in TIME_SAMPLINGS:
                raise ValueError(f"train.{key} {getattr(self.config, key)!r} unknown; choose from {list(TIME_SAMPLINGS)}")
        if int(self.config.fp_group) != self.config.fp_group or self.config.fp_group < 1:
            raise ValueError(f"train.fp_group = {self.config.fp_group}; it must be a positive integer (1: no grouping)")
        if not 0.0 <= self.config.uniform_time_fraction <= 1.0:
            raise ValueError(f"train.uniform_time_fraction = {self.config.uniform_time_fraction}; it must lie in [0, 1]")
        self.device, self.dtype = torch.device(device), dtype
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.score_model = build_score_model(spec, dtype).to(self.device)
        self.ema = EMA(self.score_model, self.config.ema_decay)
        self.step, self.history = 0, {"step": [], "loss": [], "dsm": [], "fp": [], "val_step": [], "val": []}
        self.scale: float | None = None
        self.kT: float | None = None
        self.skipped_steps = 0
        self.stopped_early = False
        self.train_seconds = 0.0  # wall-clock time spent in training steps, summed over resumed calls
        self._optimizer, self._optimizer_stage = None, None
        n = spec.n_particles - 1 if spec.centred else spec.n_particles
        self.n_dof = spec.dim * n
        self.planned_steps, self.extra_steps = self.config.steps, 0
        self._stages = self._plan_stages()

    # planning ----------------------------------------------------------------------------------------
    def _plan_stages(self) -> list[dict]:
        """Training stages: (expert index, t range, first step, last step), large t first."""
        cfg, model = self.config, self.score_model
        experts = getattr(model, "experts", None)
        scheduled = self.planned_steps - self.extra_steps  # steps added on resume run after the schedule
        if experts is None:
            stages = [dict(expert=None, t_range=(self.sde.t_min, 1.0), start=0, stop=scheduled)]
        else:
            fractions = list(cfg.expert_step_fractions)
            if len(fractions) != len(experts):
                raise ValueError(
                    f"expert_step_fractions has {len(fractions)} entries; the mixture has {len(experts)} experts"
                )
            counts = [round(scheduled * f / sum(fractions)) for f in fractions]
            counts[-1] = scheduled - sum(counts[:-1])
            stages, start = [], 0
            for k, count in zip(reversed(range(len(experts))), counts, strict=True):
                lo, hi = model.time_range(k)
                stages.append(dict(expert=k, t_range=(max(lo, self.sde.t_min), hi), start=start, stop=start + count))
                start += count
        for stage in stages:
            stage["decay_stop"] = stage["stop"]
        stages[-1]["stop"] += self.extra_steps  # the last (small-t) stage goes on at the final learning rate
        return stages

    def _stage(self, step: int) -> dict:
        return next(s for s in self._stages if s["start"] <= step < s["stop"])

    def _trained_module(self, stage: dict):
        return self.score_model if stage["expert"] is None else self.score_model.experts[stage["expert"]]

    def _warm_start(self, stage: dict) -> None:
        """With ``expert_warm_start``, expert k begins from the EMA weights of expert k + 1, trained just before on
        the next larger times, instead of from its random initialisation (weights and EMA shadow both)."""
        k, n = stage["expert"], len(getattr(self.score_model, "experts", ()))
        if not self.config.expert_warm_start or k is None or k + 1 >= n:
            return
        source, target = f"experts.{k + 1}.", f"experts.{k}."
        with torch.no_grad():
            state = self.score_model.state_dict()
            for key, value in state.items():
                if key.startswith(target):
                    shadow = self.ema.shadow[source + key[len(target) :]]
                    value.copy_(shadow)
                    self.ema.shadow[key].copy_(shadow)

    def _new_optimizer(self, stage: dict):
        params = self._trained_module(stage).parameters()
        # foreach: one fused update over all parameters (the default on CPU loops over them in Python)
        return torch.optim.AdamW(params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay, foreach=True)

    def _learning_rate(self, step: int, stage: dict) -> float:
        cfg = self.config
        progress = min(1.0, (step - stage["start"]) / max(1, stage["decay_stop"] - stage["start"]))
        return cfg.final_learning_rate + 0.5 * (cfg.learning_rate - cfg.final_learning_rate) * (
            1 + math.cos(math.pi * progress)
        )

    # data --------------------------------------------------------------------------------------------
    def _prepare(self, data: Tensor) -> Tensor:
        data = torch.as_tensor(data)
        shape = (self.spec.n_particles, self.spec.dim)
        if data.ndim != 3 or tuple(data.shape[1:]) != shape:
            raise ValueError(f"training data have shape {tuple(data.shape)}; expected (frames, {shape[0]}, {shape[1]})")
        if not torch.isfinite(data).all():
            raise ValueError("training data contain NaN or infinite coordinates; remove those frames")
        data = data.to(self.device, self.dtype)
        return remove_centroid(data) if self.spec.centred else data

    # training ----------------------------------------------------------------------------------------
    def fit(
        self,
        data: Tensor,
        kT: float,
        validation_data: Tensor | None = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
        callback=None,
    ) -> "ScoreEstimator":
        """Train on equilibrium samples.

        Parameters
        ----------
        data : Tensor (M, N, d), nm; training conformations
        kT : thermal energy of the data, kJ/mol (sets the force-field units)
        validation_data : Tensor (M', N, d), nm; its DSM loss on a fixed (t, eps) grid is logged
        checkpoint_dir : where ``checkpoint.pt`` is written every ``checkpoint_every`` steps; if it holds one,
            training resumes from it
        callback : called as ``callback(estimator)`` after every step (e.g. to stop early)
        """
        cfg = self.config
        data = self._prepare(data)
        if self.scale is None:
            self.scale = float(cfg.scale or data.pow(2).mean().sqrt())
        self.kT = float(kT)
        x_data = data / self.scale
        x_val = self._prepare(validation_data) / self.scale if validation_data is not None else None
        ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
        if ckpt is not None and ckpt.is_file():
            self._restore(load_checkpoint(ckpt, self.device))
        elif self.step == 0 and any(isinstance(m, Prior) for m in self.score_model.modules()):
            for prior in (m for m in self.score_model.modules() if isinstance(m, Prior)):
                prior.fit(x_data, self.sde)
            self.ema = EMA(self.score_model, self.config.ema_decay)  # the average starts from the fitted prior
        began_fit = time.monotonic()
        deadline = None if cfg.max_minutes is None else began_fit + 60.0 * cfg.max_minutes
        replan = None
        if cfg.fit_steps_to_budget and cfg.max_minutes is not None and self.step == 0:
            replan = self._fit_steps_to(0.95 * 60.0 * cfg.max_minutes, x_data)
        bar = tqdm(total=self.planned_steps, initial=self.step, disable=not progress, desc="training", dynamic_ncols=True)
        self.stopped_early = False
        began_loop = time.monotonic()
        while self.step < self.planned_steps:
            if deadline is not None and time.monotonic() > deadline:
                self.stopped_early = True
                if ckpt is not None:
                    save_checkpoint(self._state(), ckpt)
                break
            began = time.perf_counter()
            self._train_step(x_data)
            self.train_seconds += time.perf_counter() - began
            if replan is not None and self.step >= replan["next"]:
                self._replan(replan, time.monotonic() - began_loop, began_fit + 0.95 * 60.0 * cfg.max_minutes)
                bar.total = self.planned_steps
            last = self.step == self.planned_steps
            if x_val is not None and (self.step % cfg.validation_every == 0 or last):
                self.history["val_step"].append(self.step)
                self.history["val"].append(self.validation_loss(x_val))
            if ckpt is not None and (self.step % cfg.checkpoint_every == 0 or last):
                save_checkpoint(self._state(), ckpt)
            bar.update(1)
            if self.step % 50 == 0:
                bar.set_postfix(loss=f"{self.history['loss'][-1]:.4g}")
            if callback is not None:
                callback(self)
        bar.close()
        return self

    def _fit_steps_to(self, seconds: float, x_data: Tensor, repeats: int = 5) -> dict:
        """Lower ``planned_steps`` so that training takes about ``seconds``: one timed forward + backward pass
        of each stage (after a warm-up; no parameter changes), weighted by the stage's share of the steps.

        The micro-timing misses the loop around the network (optimiser, EMA, validation) and the machine's load,
        so the plan is corrected by the measured loop time at 5%, 25% and 50% of it (:meth:`_replan`); returns
        what those corrections need."""
        cost, costs = 0.0, []
        for stage in self._stages:
            module = self._trained_module(stage)
            gen = torch.Generator(device=self.device).manual_seed(987654321)
            times = []
            for _ in range(repeats + 1):
                began = time.perf_counter()
                self._loss(module, stage, x_data, gen)[0].backward()
                times.append(time.perf_counter() - began)
            module.zero_grad(set_to_none=True)
            costs.append(sorted(times[1:])[repeats // 2])
            cost += costs[-1] * (stage["stop"] - stage["start"]) / self.planned_steps
        self.planned_steps = max(1, min(self.config.steps, int(seconds / (1.3 * cost))))  # 30%: EMA, optimiser, validation
        self._stages = self._plan_stages()
        plan = {"costs": costs, "fractions": [0.05, 0.25, 0.5]}
        plan["next"] = max(20, int(plan["fractions"].pop(0) * self.planned_steps))
        return plan

    def _replan(self, plan: dict, elapsed: float, soft_deadline: float) -> None:
        """Re-plan the steps from the time the loop took so far (``elapsed`` s for ``self.step`` steps): the timed
        cost of every stage is scaled by (elapsed / timed cost of the steps done), and the schedule is fitted to the
        time left before ``soft_deadline``. Called at 5%, 25% and 50% of the plan, so the learning-rate schedule
        and the experts' shares stay as planned while the total adapts to the machine."""
        timed = sum(plan["costs"][k] * (min(self.step, s["stop"]) - s["start"]) for k, s in enumerate(self._stages)
                    if self.step > s["start"])  # fmt: skip
        factor, left = elapsed / max(timed, 1e-12), soft_deadline - time.monotonic()

        def time_left(planned: int) -> float:  # seconds the steps after this one take under a plan of `planned`
            self.planned_steps = planned
            self._stages = self._plan_stages()
            stages = zip(plan["costs"], self._stages, strict=True)
            return factor * sum(c * max(0, s["stop"] - max(self.step, s["start"])) for c, s in stages)

        lo, hi = self.step + 1, max(self.step + 1, self.config.steps)
        while lo < hi:  # the largest plan whose remaining steps fit the time left
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if time_left(mid) <= left else (lo, mid - 1)
        time_left(lo)
        plan["next"] = int(plan["fractions"].pop(0) * self.planned_steps) if plan["fractions"] else float("inf")

    def _loss(self, module, stage: dict, x_data: Tensor, gen: torch.Generator):
        """(loss, dsm, fp) of one batch drawn with ``gen``."""
        cfg = self.config
        idx = torch.randint(len(x_data), (cfg.batch_size,), generator=gen, device=self.device)
        use_fp = cfg.fp_weight > 0 and stage["expert"] in (None, 0)
        k = max(1, cfg.fp_group)
        fp_count = k * max(1, round(cfg.fp_fraction * cfg.batch_size / k)) if use_fp else 0
        # the FP subset (the first fp_count samples) draws its own times: the residual grows like 1 / sigma^2 as
        # t -> 0, so the small-t-heavy DSM distribution would hand the FP term its most violent samples
        t = torch.cat([
            sample_times(self.sde, fp_count // k, stage["t_range"], cfg.fp_time_sampling, cfg.uniform_time_fraction,
                         cfg.log_sigma_min, gen, self.dtype, self.device).repeat_interleave(k),
            sample_times(self.sde, cfg.batch_size - fp_count, stage["t_range"], cfg.time_sampling,
                         cfg.uniform_time_fraction, cfg.log_sigma_min, gen, self.dtype, self.device),
        ])  # fmt: skip
        eps = self.sde.noise(x_data[idx].shape, self.spec.centred, gen, self.dtype, self.device)
        terms = loss_terms(
            module, self.sde, x_data[idx], t, eps, self.n_dof, self.spec.centred, fp_count, cfg.fp_step, gen, k
        )
        dsm = terms.dsm.mean()
        if terms.fp is None:
            fp = torch.zeros((), device=self.device)
        else:
            fp = (terms.fp * self.sde.sigma(t[:fp_count]) ** cfg.fp_sigma_power).mean()
        return dsm + cfg.fp_weight * fp, dsm, fp

    def _train_step(self, x_data: Tensor) -> None:
        cfg, stage = self.config, self._stage(self.step)
        if self._optimizer is None or self._optimizer_stage != stage["start"]:
            if self.step == stage["start"]:
                self._warm_start(stage)
            self._optimizer, self._optimizer_stage = self._new_optimizer(stage), stage["start"]
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + self.step)
        module = self._trained_module(stage)
        loss, dsm, fp = self._loss(module, stage, x_data, gen)
        self.step += 1
        if not torch.isfinite(loss):
            self.skipped_steps += 1
            if self.skipped_steps > 10:
                raise FloatingPointError(
                    f"training loss non-finite in {self.skipped_steps} steps (last: step {self.step}); lower "
                    "learning_rate or fp_weight, set grad_clip, or train in float64"
                )
            return
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip, foreach=True)
        for group in self._optimizer.param_groups:
            group["lr"] = self._learning_rate(self.step - 1, stage)
        self._optimizer.step()
        self.ema.update(self.score_model)
        for key, value in (("step", self.step), ("loss", loss), ("dsm", dsm), ("fp", fp)):
            self.history[key].append(float(value.detach()) if torch.is_tensor(value) else float(value))

    def validation_loss(self, x_val: Tensor, n_times: int = 16, max_frames: int = 2048) -> float:
        """DSM loss of the EMA model on validation data, on a fixed grid of t and seeded noise."""
        model = self.fetch_model().score_model
        x0 = x_val[:max_frames]
        gen = torch.Generator(device=self.device).manual_seed(12345)
        total = 0.0
        for t_value in torch.linspace(self.sde.t_min, 1.0, n_times).tolist():
            t = torch.full((len(x0),), t_value, device=self.device, dtype=self.dtype)
            eps = self.sde.noise(x0.shape, self.spec.centred, gen, self.dtype, self.device)
            total += float(loss_terms(model, self.sde, x0, t, eps, self.n_dof, self.spec.centred).dsm.mean().detach())
        return total / n_times

    # results -----------------------------------------------------------------------------------------
    def fetch_model(self) -> DiffusionModel:
        """The trained model with EMA weights, in physical units."""
        if self.scale is None:
            raise RuntimeError("fit() has not been called: there is no trained model to fetch")
        model = build_score_model(self.spec, self.dtype).to(self.device)
        model.load_state_dict(self.ema.shadow)
        return DiffusionModel(self.spec, model, self.sde, self.scale, self.kT)

    # checkpoints -------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "step": self.step,
            "scale": self.scale,
            "kT": self.kT,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            "model": self.score_model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self._optimizer.state_dict() if self._optimizer is not None else None,
            "optimizer_stage": self._optimizer_stage,
            "history": self.history,
            "planned_steps": self.planned_steps,
            "extra_steps": self.extra_steps,
            "spec": self.spec.to_dict(),
            "config": asdict(self.config),
        }

    def _restore(self, state: dict) -> None:
        if state["spec"] != self.spec.to_dict():
            raise ValueError("the checkpoint was written for another model spec; use a fresh checkpoint_dir")
        check_resumable(state["config"], self.config)
        self.step, self.scale, self.kT = state["step"], state["scale"], state["kT"]
        self.skipped_steps, self.history = state["skipped_steps"], state["history"]
        self.train_seconds = float(state.get("train_seconds", 0.0))
        more = self.config.steps - int(state["config"]["steps"])  # honoured: they run after the saved schedule
        self.planned_steps = int(state.get("planned_steps", self.config.steps)) + max(0, more)
        self.extra_steps = int(state.get("extra_steps", 0)) + max(0, more)
        self._stages = self._plan_stages()
        load_weights(self.score_model, state["model"], "the training checkpoint")
        self.ema.load_state_dict(state["ema"])
        if state["optimizer"] is not None:
            stage = self._stage(min(self.step, self.planned_steps - 1))
            if state["optimizer_stage"] == stage["start"]:
                self._optimizer, self._optimizer_stage = self._new_optimizer(stage), stage["start"]
                self._optimizer.load_state_dict(state["optimizer"])
