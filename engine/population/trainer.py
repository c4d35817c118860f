"""Training the ensemble members: flows, optimiser, weight average, the step, validation, results.

One training step of member k (all batched, no Python loop over galaxies):

1. draw ``n_draw`` base-normal vectors from the member's generator and push them through the flow and the
   box bijection -> ``theta`` (n_draw, D), strictly inside the parameter box;
2. forward model -> noise-free fluxes; noise model -> additive noise realisation ``delta``; predicted
   ``f + a * delta`` with ``a`` the anti-annealed noise amplitude (0 -> 1 over ``noise_ramp`` of training);
3. selection cuts on the noisy prediction (a mask); with cuts the forward model first runs without
   gradients on all ``n_draw`` samples and then *with* gradients only on the (at most ``batch``) selected
   ones.  ``n_draw`` adapts to the acceptance rate (exponential moving average), capped at
   ``max_draw_factor * batch``;
4. features and loss (:mod:`engine.population.objective`) against the observed training rows; Adam
   (Kingma & Ba 2015); one-cycle learning rate (Smith & Topin 2019).

Validation (every ``val_every`` steps and at the last step) uses the held-out catalog rows, full noise, a
fixed number of draws and a *fixed* random stream per member (common random numbers, so successive
validation losses differ only through the flow), and is always the sliced Wasserstein distance with fixed
directions (cheap, and one metric for comparing members whatever the training loss).  The state kept is
the best validation state among the steps from ``best_from`` of training on; by default (1) the final
state: the best state of a whole run can be an undertrained one from early in training whose validation
loss is lower only through the scatter of the validation estimate.  With ``ema`` > 0 the flow's weights
are also averaged over the steps (an exponential moving average, Polyak & Juditsky 1992), and validation,
the kept state and the results use the average: single Adam iterates scatter from one step to the next,
so the best single iterate is partly a lucky draw, while the average is not.
The noise floor is the same distance between the validation and the training rows of the catalog.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import PopsedError

from .config import TrainConfig
from .convergence import ensemble_report  # noqa: F401  (re-exported: its former home)
from .flow import PopulationFlow
from .noise import NoiseModel, pogson_mag
from .objective import Featurizer, Objective
from .observed import Observed
from .selection import Cut, check_cuts, selection_mask

__all__ = ["MemberState", "Trainer", "cpu_state", "ensemble_report"]


@dataclass
class MemberState:
    member: int
    seed: int
    flow: PopulationFlow
    opt: torch.optim.Optimizer
    gen: torch.Generator
    step: int = 0  # next step to run
    finished: bool = False
    best_val: float = math.inf
    best_step: int = -1
    best_flow: dict | None = None
    last_val: float | None = None
    accept: float = 1.0
    nonfinite: int = 0
    seconds: float = 0.0
    status: str = "running"
    ema_flow: PopulationFlow | None = None  # weight average (``TrainConfig.ema`` > 0)

    @property
    def eval_flow(self) -> PopulationFlow:
        """The flow that is validated and kept: the weight average when there is one."""
        return self.ema_flow if self.ema_flow is not None else self.flow


def _finite_or_none(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def cpu_state(flow: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in flow.state_dict().items()}


class Trainer:
    """Trains the K members of the ensemble one after the other; iterate :meth:`events`.

    ``model`` follows the forward-model protocol (``bands``, ``param_names``, ``bounds``, ``fluxes``,
    ``derived``).  The trainer holds at most one member in memory at a time.
    """

    def __init__(self, model, observed: Observed, noise: NoiseModel, cuts: list[Cut], cfg: TrainConfig,
                 device):
        self.model = model
        self.obs = observed
        self.noise = noise.subset(model.bands) if tuple(noise.bands) != tuple(model.bands) else noise
        self.cuts = list(cuts)
        check_cuts(self.cuts, model.bands)
        self.cfg = cfg
        self.device = torch.device(device)
        self.bands = tuple(model.bands)
        if tuple(observed.bands) != self.bands:
            raise PopsedError(f"catalog bands {list(observed.bands)} differ from the forward model's "
                              f"{list(self.bands)}")
        self.param_names = tuple(model.param_names)
        self.use_z = cfg.redshift == "observed"
        if self.use_z and "z" not in self.param_names:
            raise PopsedError("--redshift observed needs a forward model with a 'z' parameter")
        self.z_index = self.param_names.index("z") if "z" in self.param_names else None
        self.bounds = torch.as_tensor(model.bounds, dtype=torch.float32).detach().cpu()
        tr, va = observed.train, observed.val
        z_tr = observed.z_spec[tr] if self.use_z else None
        self.feat = Featurizer.fit(observed.flux[tr], self.noise.softening, cfg.colours, z_tr, cfg.z_weight)
        dt = torch.float32
        self.x_train = torch.tensor(self.feat.numpy(observed.flux[tr], z_tr), dtype=dt, device=self.device)
        self.x_val = torch.tensor(self.feat.numpy(observed.flux[va],
                                                  observed.z_spec[va] if self.use_z else None),
                                  dtype=dt, device=self.device)
        self.seeds = cfg.member_seeds()
        self.objective = Objective(cfg, self.feat, self.x_train, self.use_z, self.device, self.cuts,
                                   self.bands)
        # the floor compares the validation rows with (at most obs_cap of) the training rows: a training step
        # never sees more than obs_cap rows either, and sorting 512 projections of a 10^6-row catalog would
        # cost gigabytes
        x_ref = self.x_train
        if x_ref.shape[0] > cfg.obs_cap:
            pick = torch.randperm(x_ref.shape[0], generator=torch.Generator().manual_seed(int(cfg.seed) + 7))
            x_ref = x_ref[pick[:cfg.obs_cap].to(x_ref.device)]
        self.noise_floor = self.objective.validation_distance(self.x_val, x_ref)
        self.preview_every = 0  # set by the run writer; 0 = never
        self.last_preview: dict | None = None
        self.t0 = time.time()
        self.time_offset = 0.0

    # ------------------------------------------------------------------ bookkeeping
    def now(self) -> float:
        return self.time_offset + (time.time() - self.t0)

    def _stamp(self, ev: dict) -> dict:
        ev["time"] = round(self.now(), 4)
        ev["wall"] = time.time()
        return ev

    def _generator(self, seed: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed))
        return g

    def new_member(self, k: int) -> MemberState:
        seed = self.seeds[k]
        torch.manual_seed(seed)  # flow initialisation (nflows uses the global RNG)
        flow = PopulationFlow(self.bounds, self.cfg.flow).to(self.device)
        opt = torch.optim.Adam(flow.parameters(), lr=self.cfg.lr_at(0))
        ms = MemberState(k, seed, flow, opt, self._generator(seed), accept=1.0 if not self.cuts else 0.5)
        if self.cfg.ema > 0:
            ms.ema_flow = PopulationFlow(self.bounds, self.cfg.flow).to(self.device).requires_grad_(False)
            ms.ema_flow.load_state_dict(flow.state_dict())
        return ms

    def update_average(self, ms: MemberState) -> None:
        """One step of the weight average, with the usual warm-up of the decay, min(ema, (1+t)/(10+t)), so
        the average does not remember the initial flow for long (as TensorFlow's ExponentialMovingAverage)."""
        if ms.ema_flow is None:
            return
        d = min(self.cfg.ema, (1.0 + ms.step) / (10.0 + ms.step))
        with torch.no_grad():
            for avg, cur in zip(ms.ema_flow.state_dict().values(), ms.flow.state_dict().values(),
                                strict=True):
                if avg.is_floating_point():
                    avg.lerp_(cur, 1.0 - d)
                else:
                    avg.copy_(cur)

    def member_state_dict(self, ms: MemberState) -> dict:
        """Everything needed to resume member ``ms`` (tensors, numbers, strings: ``weights_only`` safe)."""
        return {
            "format": "popsed-checkpoint", "version": 1,
            "member": ms.member, "seed": ms.seed, "step": ms.step, "finished": ms.finished,
            "flow": cpu_state(ms.flow), "opt": ms.opt.state_dict(), "gen": ms.gen.get_state(),
            "ema_flow": cpu_state(ms.ema_flow) if ms.ema_flow is not None else {},
            "best_val": ms.best_val, "best_step": ms.best_step, "best_flow": ms.best_flow or {},
            "last_val": -1.0 if ms.last_val is None else float(ms.last_val),
            "accept": ms.accept, "nonfinite": ms.nonfinite, "seconds": ms.seconds, "status": ms.status,
            "time": self.now(),
        }

    def load_member(self, sd: dict) -> MemberState:
        k = int(sd["member"])
        ms = self.new_member(k)
        if int(sd["seed"]) != ms.seed:
            raise PopsedError(f"checkpoint of member {k} has seed {sd['seed']}, the config says {ms.seed}")
        ms.flow.load_state_dict(sd["flow"])
        if ms.ema_flow is not None:
            ms.ema_flow.load_state_dict(sd.get("ema_flow") or sd["flow"])
        ms.opt.load_state_dict(sd["opt"])
        ms.gen.set_state(sd["gen"])
        ms.step, ms.finished = int(sd["step"]), bool(sd["finished"])
        ms.best_val, ms.best_step = float(sd["best_val"]), int(sd["best_step"])
        ms.best_flow = dict(sd["best_flow"]) or None
        ms.last_val = None if float(sd["last_val"]) < 0 else float(sd["last_val"])
        ms.accept, ms.nonfinite = float(sd["accept"]), int(sd["nonfinite"])
        ms.seconds, ms.status = float(sd["seconds"]), str(sd["status"])
        return ms

    # ------------------------------------------------------------------ the forward pass
    def predict(self, flow: PopulationFlow, gen: torch.Generator, n: int, amplitude: float, n_draw: int,
                grad: bool = True, pull: float = 0.0):
        """Sample the flow, predict noisy photometry, apply the cuts.

        Returns ``(features, weights, theta, noisy_flux, n_selected, pull_penalty)``.  Without gradients
        (validation, results) the rows are the (at most ``n``) selected samples and ``weights`` is None.
        With gradients and cuts, the rows are the selected samples among the first draws (up to the
        ``n``-th selected) *plus* the rejected draws near a cut; ``weights`` is 1 for selected and 0 for
        rejected rows in value, but carries the gradient of the smooth selection probability
        ``Phi((f - f_cut) / sigma)`` (straight-through): the loss is computed on exactly the selected
        set, while a galaxy just beyond the limit still feels whether the catalog wants more galaxies
        there.  Without that, mass that drifts across the limit never comes back and the acceptance
        rate collapses.
        """
        penalty = None
        weights = None
        x_base = flow.base_noise(n_draw, gen)
        # with cuts, all draws go through flow and forward model without gradients first; only the rows kept
        # are pushed again with gradients (the same base draws give the same theta), so the backward pass
        # costs the kept rows only, not all n_draw
        with torch.set_grad_enabled(grad and not self.cuts):
            theta = flow.push(x_base)
        if self.cuts:
            with torch.no_grad():
                f0 = self.model.fluxes(theta)
                sigma = self.noise.draw_sigma(f0, gen)
                delta = sigma * torch.randn(f0.shape, generator=gen, device=f0.device, dtype=f0.dtype)
                mask = selection_mask(f0 + amplitude * delta, self.bands, self.cuts, gen)
                pos = torch.nonzero(mask).squeeze(1)
                n_sel = int(pos.numel())
                cutoff = int(pos[n - 1]) + 1 if n_sel >= n else n_draw
                if grad and self.cfg.soft_selection:
                    near = self.objective.near_cut(f0[:cutoff], sigma[:cutoff], amplitude,
                                                   f0[:cutoff] + amplitude * delta[:cutoff]) & ~mask[:cutoff]
                    idx = torch.nonzero(mask[:cutoff] | near).squeeze(1)
                else:
                    idx = pos[:n]
            if grad:
                theta = flow.push(x_base[idx])
                f = self.model.fluxes(theta)
                if self.cfg.soft_selection:
                    sp = self.objective.selection_probability(f, sigma[idx], amplitude,
                                                              f + amplitude * delta[idx])
                    weights = mask[idx].to(f.dtype) + (sp - sp.detach())
                if pull > 0 and n_sel < n_draw:
                    penalty = self._pull_penalty(flow, x_base, delta, mask, amplitude, gen, n, pull)
            else:
                theta = theta[idx]
                f = f0[idx]
            noisy = f + amplitude * delta[idx]
        else:
            with torch.set_grad_enabled(grad):
                theta = theta[:n]
                f = self.model.fluxes(theta)
            delta = self.noise.draw(f, gen)
            noisy = f + amplitude * delta
            n_sel = n_draw
        with torch.set_grad_enabled(grad):
            z = theta[:, self.z_index] if self.use_z else None
            feats = self.feat(noisy, z) if noisy.shape[0] else noisy.new_zeros((0, self.x_train.shape[1]))
        return feats, weights, theta, noisy, n_sel, penalty

    def _pull_penalty(self, flow, x_base, delta, mask, amplitude, gen, n, pull) -> torch.Tensor:
        """The selection pull (:meth:`Objective.pull_penalty`) on at most ``n // 4`` of the rejected draws."""
        rej = torch.nonzero(~mask).squeeze(1)
        m = max(1, n // 4)
        if rej.numel() > m:
            rej = rej[torch.randperm(rej.numel(), generator=gen, device=rej.device)[:m]]
        f = self.model.fluxes(flow.push(x_base[rej])) + amplitude * delta[rej]
        return self.objective.pull_penalty(f, (mask.numel() - int(mask.sum())) / mask.numel(), pull)

    def _n_draw(self, ms: MemberState) -> int:
        b = self.cfg.batch
        if not self.cuts:
            return b
        return int(max(b, min(math.ceil(1.1 * b / max(ms.accept, 1e-3)), self.cfg.max_draw_factor * b)))

    def _obs_batch(self, gen: torch.Generator) -> torch.Tensor:
        x = self.x_train
        if x.shape[0] <= self.cfg.obs_cap:
            return x
        idx = torch.randint(0, x.shape[0], (self.cfg.obs_cap,), generator=gen, device=x.device)
        return x[idx]

    @torch.no_grad()
    def validate(self, ms: MemberState) -> float:
        g = self._generator(ms.seed + 7919)  # the same stream at every validation
        n_draw = int(self.cfg.val_draw_factor * self.cfg.batch) if self.cuts else self.cfg.batch
        feats = self.predict(ms.eval_flow, g, n_draw, 1.0, n_draw, grad=False)[0]
        if feats.shape[0] < 2:
            return math.inf
        return self.objective.validation_distance(feats, self.x_val)

    # ------------------------------------------------------------------ stepping
    def step(self, ms: MemberState) -> dict:
        cfg = self.cfg
        t = time.perf_counter()
        i = ms.step
        amp, lr, blur = cfg.noise_at(i), cfg.lr_at(i), cfg.blur_at(i)
        for g in ms.opt.param_groups:
            g["lr"] = lr
        n_draw = self._n_draw(ms)
        feats, weights, theta, noisy, n_sel, pen = self.predict(ms.flow, ms.gen, cfg.batch, amp, n_draw,
                                                                grad=True, pull=cfg.selection_pull)
        if self.cuts:
            ms.accept = 0.8 * ms.accept + 0.2 * (n_sel / n_draw) if i > 0 else max(n_sel / n_draw, 1e-3)
        obs = self._obs_batch(ms.gen)
        ms.opt.zero_grad(set_to_none=True)
        loss_v = ent_v = math.nan
        if feats.shape[0] >= 2 and (weights is None or float(weights.detach().sum()) >= 2):
            loss = self.objective.train_loss(feats, obs, ms.gen, blur, weights)
            loss_v = float(loss.detach())
            loss, ent_v = self.objective.regularised(loss, pen, ms.flow, ms.gen)
            if math.isfinite(loss_v):
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(ms.flow.parameters(), cfg.grad_clip)
                if torch.isfinite(gn):
                    ms.opt.step()
                    self.update_average(ms)
                    ms.nonfinite = 0
                else:
                    ms.nonfinite += 1
            else:
                ms.nonfinite += 1
        else:
            ms.nonfinite += 1
        if self.preview_every and (i % self.preview_every == 0 or i == cfg.steps - 1):
            m = pogson_mag(noisy.detach()[:2000]).cpu().numpy()
            self.last_preview = {"member": ms.member, "step": i, "mag": m}
        val = None
        if i % cfg.val_every == 0 or i == cfg.steps - 1:
            val = self.validate(ms)
            ms.last_val = val
            if i >= cfg.best_from * (cfg.steps - 1) and val < ms.best_val:
                ms.best_val, ms.best_step, ms.best_flow = val, i, cpu_state(ms.eval_flow)
        ms.step += 1
        sec = time.perf_counter() - t
        ms.seconds += sec
        ev = {"event": "step", "member": ms.member, "step": i, "train_loss": _finite_or_none(loss_v),
              "val_loss": _finite_or_none(val), "noise": amp, "blur": blur, "lr": lr,
              "seconds": round(sec, 5),
              "n_draw": n_draw, "n_selected": n_sel}
        if cfg.entropy > 0:
            ev["entropy"] = _finite_or_none(ent_v)
        if ms.nonfinite >= cfg.diverge_nonfinite:
            ms.status = "diverged"
        return self._stamp(ev)

    def finish_member(self, ms: MemberState) -> dict:
        ms.finished = True
        if ms.status != "diverged":
            # "converged" here only means finished with a finite validation loss (the value of the format's
            # member_done event); whether the member converged is decided at the end (:mod:`.convergence`)
            ok = math.isfinite(ms.best_val) and ms.best_flow is not None
            ms.status = "converged" if ok else "diverged"
        return self._stamp({"event": "member_done", "member": ms.member, "status": ms.status,
                            "best_val_loss": _finite_or_none(ms.best_val), "best_step": ms.best_step,
                            "final_val_loss": _finite_or_none(ms.last_val), "seconds": round(ms.seconds, 3)})

    def iter_member(self, ms: MemberState) -> Iterator[dict]:
        """Steps of one member from ``ms.step`` to the end, then its ``member_done`` event."""
        while ms.step < self.cfg.steps and ms.status != "diverged":
            yield self.step(ms)
        yield self.finish_member(ms)

    def events(self, states: dict[int, MemberState] | None = None) -> Iterator[dict]:
        """All members in order; ``states`` maps member -> a resumed state (finished ones are skipped)."""
        states = states or {}
        self.current: MemberState | None = None
        for k in range(self.cfg.members):
            ms = states.get(k)
            if ms is not None and ms.finished:
                continue
            ms = ms or self.new_member(k)
            self.current = ms
            yield from self.iter_member(ms)

    # ------------------------------------------------------------------ results
    @torch.no_grad()
    def population(self, ms: MemberState, n: int | None = None) -> dict[str, np.ndarray]:
        """Samples of the best flow of member ``ms``: theta, derived, noisy magnitudes, selected."""
        n = n or self.cfg.population_samples
        flow = PopulationFlow(self.bounds, self.cfg.flow).to(self.device)
        flow.load_state_dict(ms.best_flow if ms.best_flow else cpu_state(ms.eval_flow))
        g = self._generator(ms.seed + 104729)
        theta = flow.sample(n, g)
        f = self.model.fluxes(theta)
        noisy = self.noise.apply(f, 1.0, g)
        sel = (selection_mask(noisy, self.bands, self.cuts, g) if self.cuts
               else torch.ones(n, dtype=torch.bool, device=theta.device))
        der = self.model.derived(theta)
        out: dict[str, np.ndarray] = {"member": np.full(n, ms.member, dtype=np.int32)}
        th = theta.cpu().numpy().astype(np.float64)
        for j, name in enumerate(self.param_names):
            out[name] = th[:, j]
        for name, v in der.items():
            out[name] = v.detach().cpu().numpy().astype(np.float64)
        mags = pogson_mag(noisy).cpu().numpy().astype(np.float64)
        mags[~np.isfinite(mags)] = np.nan
        for j, b in enumerate(self.bands):
            out[f"mag_{b}"] = mags[:, j]
        out["selected"] = sel.cpu().numpy().astype(bool)
        return out
