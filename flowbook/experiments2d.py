"""Figure 3 of Rezende & Mohamed (2015), §6.1: many 2-D flow fits trained together in one computation.

Every fit approximates one target density p(z) ∝ exp(−U(z)) of Table 1 by q_K, the density of
z_K = f_K ∘ … ∘ f_1(z_0) with z_0 ~ q_0 = N(μ, diag σ²), by minimizing the annealed free energy

    F_β = E_{q0}[ln q0(z0) − Σ_k ln|det ∂f_k/∂z_{k−1}| + β_t·U(z_K)]            (eq. 15, ln p = −U)

with β_t from :func:`flowbook.objectives.beta_schedule`. At β = 1, F + ln Z = KL(q_K‖p) ≥ 0, so the
true KL is reported from F and the normalizer ln Z of :func:`flowbook.energies.log_normalizer`.

Why batched: a 2-D fit is a chain of tiny tensor operations, so its cost is Python and dispatch
overhead, not arithmetic. Fits that share a method and a flow length K form one :class:`FitGroup`
with an explicit *fit axis*: each fit has its own q0 and flow parameters, and one call to the
transform of :mod:`flowbook.flows` runs every fit of the group at once.

* planar/radial: the per-fit parameters (F, K, ·) are repeated over that fit's samples and passed
  in the amortized (batch, K, ·) form of :func:`flowbook.flows.planar` / :func:`~flowbook.flows.radial`.
* NICE: :func:`flowbook.flows.additive_coupling` shares its coupling weights over the batch, so a
  group runs :func:`nice_fits`, the same K layers with a leading fit axis on every weight (batched
  matrix products). In 2-D the coupling reads one coordinate, so its hidden layer is an outer
  product and the cost is F·n·H per layer; ``tests/test_experiments2d.py`` checks every fit
  against its own :func:`flowbook.flows.additive_coupling` call.

The losses of different fits depend on disjoint parameters, so summing them and taking one Adam
step is the same as taking one step per fit (Adam's update is per parameter).

Run the full-mode experiment with ``python -m flowbook.experiments2d --mode full``.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from flowbook import energies, flows
from flowbook.objectives import beta_schedule

__all__ = ["METHODS", "FitConfig", "FAST", "FULL", "nice_fits", "FitGroup", "build_groups", "annealed_free_energy", "train", "evaluate",
           "log_density_grid", "run_experiment", "fit_state", "fit_from_state", "main"]

METHODS = ("planar", "radial", "nice-orth", "nice-perm")
FAMILY = {"planar": "planar", "radial": "radial", "nice-orth": "nice", "nice-perm": "nice"}
LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class FitConfig:
    """Everything that defines one batched experiment (stored with the results as provenance)."""

    targets: tuple[str, ...] = ("U1", "U2", "U3", "U4")
    methods: tuple[str, ...] = METHODS
    Ks: tuple[int, ...] = (2, 8, 32)
    updates: int = 1200          # optimizer steps
    samples: int = 128           # Monte Carlo samples of z0 per fit per step
    lr: float = 1e-2             # Adam's initial learning rate ...
    lr_final: float = 1e-3       # ... decayed geometrically to this value at the last update
    warmup: int = 500            # β_t = min(1, 0.01 + t/warmup): the annealing of §6
    nice_hidden: int = 16        # hidden units of each NICE coupling MLP
    eval_samples: int = 100_000  # samples for the reported F and KL
    seed: int = 0
    confine_scale: float = energies.CONFINE_SCALE

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"FitConfig: unknown methods {bad}; choose from {METHODS}")
        bad = [t for t in self.targets if t not in energies.POTENTIALS]
        if bad:
            raise ValueError(f"FitConfig: unknown targets {bad}; choose from {tuple(energies.POTENTIALS)}")
        if min(self.Ks, default=0) < 1 or self.updates < 1 or self.samples < 2:
            raise ValueError(f"FitConfig needs every K ≥ 1, updates ≥ 1 and samples ≥ 2, got Ks={self.Ks}, "
                             f"updates={self.updates}, samples={self.samples}")


#: fast mode — the chapter's live run (about a minute on 2 CPU cores)
FAST = FitConfig()
#: full mode (``python -m flowbook.experiments2d --mode full``). Not every fit converges within these
#: updates: chapter 4's stored runs pass ``--updates 12000`` (NICE K = 32: 24000; planar K = 32 on U3, U4:
#: 60000) and record the KL at ``--checkpoints`` as evidence (see each result's command)
FULL = FitConfig(updates=4500, samples=256, lr=1e-2, lr_final=1e-4, warmup=2000, nice_hidden=64)


def target_potential(name: str, confine_scale: float = energies.CONFINE_SCALE) -> Callable[[Tensor], Tensor]:
    """The confined potential of ``name`` (``"U2_raw"`` gives the unconfined Table 1 potential)."""
    if name.endswith("_raw"):
        return energies.POTENTIALS[name[:-4]]
    return energies.confine(energies.POTENTIALS[name], scale=confine_scale)


# ----------------------------------------------------------------------------------------------
# one group: many fits of one method family, with an explicit fit axis
# ----------------------------------------------------------------------------------------------
Label = tuple[str, str, int]  # (target, method, K)


def _permutation_matrices(perm: Tensor) -> Tensor:
    """(K, D) permutations → (K, D, D) matrices P with P z = z[perm], the same map as indexing."""
    return torch.eye(perm.shape[-1])[perm]


def nice_fits(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, mixing: Tensor) -> Tensor:
    """F independent 2-D NICE flows (:func:`flowbook.flows.additive_coupling`), one per slice of the
    leading fit axis: z (F, n, 2) → z_K (F, n, 2); the log-determinant is 0.

    Layer k of fit f mixes z ← M z (``mixing`` (F, K, 2, 2): orthogonal or permutation matrices),
    then shifts z2 += w2·relu(w1·z1 + b1) + b2 with w1, b1, w2 (F, K, H) and b2 (F, K).
    """
    for k in range(mixing.shape[1]):
        z = torch.bmm(z, mixing[:, k].transpose(-1, -2))
        z1 = z[..., :1]                                                    # (F, n, 1)
        # hidden layer: an outer product, since z1 is one coordinate (F, n, 1) × (F, 1, H)
        h = torch.relu(torch.baddbmm(b1[:, k, None], z1, w1[:, k, None]))  # (F, n, H)
        shift = torch.baddbmm(b2[:, k, None, None], h, w2[:, k, :, None])   # (F, n, 1)
        z = torch.cat([z1, z[..., 1:] + shift], -1)
    return z


class FitGroup(nn.Module):
    """Independent fits of one method family (``planar``, ``radial`` or ``nice``), with a fit axis.

    ``labels[f] = (target, method, K)``, sorted by target so that each target's fits are one slice.
    Parameters carry the fit axis first: the q0 mean and log-std are (F, 2); planar u, w are
    (F, Kmax, 2) and b is (F, Kmax); radial z0 is (F, Kmax, 2), α and β are (F, Kmax).

    Planar and radial fits of different K share one group: layers k ≥ K_f of fit f are made exact
    identities (planar: u = w = b = 0; radial: β = 0, i.e. raw β = raw α). This pads the short
    fits, which costs arithmetic but not operations, and on a CPU these fits are bound by the
    number of operations (about 10 µs each), not by arithmetic: one group of 32 layers is cheaper
    than six groups of 1 + 2 + … + 32 = 63 layers.

    NICE parameters are w1, b1, w2 (F, K, H), b2 (F, K) and the fixed mixing (F, K, 2, 2), run by
    :func:`nice_fits`. A NICE group holds one K only: padding a short fit to 32 layers of H hidden
    units would cost real arithmetic, unlike a padded planar layer.
    """

    def __init__(self, family: str, labels: Sequence[Label], nice_hidden: int = 32,
                 generator: torch.Generator | None = None):
        super().__init__()
        if family not in ("planar", "radial", "nice"):
            raise ValueError(f"FitGroup: family must be 'planar', 'radial' or 'nice', got {family!r}")
        labels = sorted((str(t), str(m), int(k)) for t, m, k in labels)
        if not labels:
            raise ValueError("FitGroup needs at least one (target, method, K) label")
        if any(FAMILY[m] != family for _, m, _ in labels):
            raise ValueError(f"FitGroup({family}): labels {labels} contain methods of another family")
        Ks = [k for _, _, k in labels]
        if family == "nice" and len(set(Ks)) != 1:
            raise ValueError(f"FitGroup(nice) holds one K only (build one group per K), got Ks {sorted(set(Ks))}")
        self.family, self.labels, self.K = family, labels, max(Ks)
        n, K = len(labels), self.K
        # slices of the fit axis that belong to each target (labels are sorted by target)
        self.target_slices: dict[str, slice] = {}
        for f, (t, _, _) in enumerate(labels):
            s = self.target_slices.get(t)
            self.target_slices[t] = slice(f if s is None else s.start, f + 1)
        self.register_buffer("layer_mask", (torch.arange(K)[None, :] < torch.tensor(Ks)[:, None]).float())
        g = generator
        self.mean = nn.Parameter(torch.zeros(n, 2))
        self.log_std = nn.Parameter(torch.zeros(n, 2))
        if family == "planar":
            bound = 1.0 / math.sqrt(2.0)  # the scale of flows.Planar's initialization, 1/√D
            self.u = nn.Parameter((torch.rand(n, K, 2, generator=g) * 2 - 1) * bound)
            self.w = nn.Parameter((torch.rand(n, K, 2, generator=g) * 2 - 1) * bound)
            self.b = nn.Parameter(torch.zeros(n, K))
        elif family == "radial":
            self.z0 = nn.Parameter(torch.randn(n, K, 2, generator=g))
            self.alpha = nn.Parameter(torch.zeros(n, K))  # raw α = raw β = 0: β ≈ 0, near the identity
            self.beta = nn.Parameter(torch.zeros(n, K))
        else:
            H = nice_hidden
            self.hidden = H
            mixings = []
            for _, method, _ in labels:
                kind = "orth" if method == "nice-orth" else "perm"
                m = flows.random_mixing(2, K, kind, generator=g)
                mixings.append(m if kind == "orth" else _permutation_matrices(m))
            self.register_buffer("mixing", torch.stack(mixings))                # (F, K, 2, 2)
            self.w1 = nn.Parameter(torch.randn(n, K, H, generator=g))  # d = 1: flows.AdditiveCoupling's 1/√d
            self.b1 = nn.Parameter(torch.zeros(n, K, H))
            # zero last layer: every coupling starts as the identity (as flows.AdditiveCoupling)
            self.w2 = nn.Parameter(torch.zeros(n, K, H))
            self.b2 = nn.Parameter(torch.zeros(n, K))

    @property
    def n_fits(self) -> int:
        return len(self.labels)

    # -- parameters in the forms flowbook.flows takes --------------------------------------------
    def _masked(self) -> tuple[Tensor, ...]:
        """The per-fit flow parameters with padded layers turned into identities."""
        m = self.layer_mask
        if self.family == "planar":
            return self.u * m[..., None], self.w * m[..., None], self.b * m
        if self.family == "radial":
            return self.z0, self.alpha, torch.where(m > 0, self.beta, self.alpha)
        return self.w1, self.b1, self.w2, self.b2, self.mixing

    def fit_params(self, f: int) -> tuple[Tensor, ...]:
        """Fit f's own K_f layers in the shared-parameter form of :mod:`flowbook.flows`
        (planar: u, w (K, 2), b (K,); radial: z0, α, β; NICE: w1, b1, w2, b2, mixing of one 2-D flow)."""
        K = self.labels[f][2]
        if self.family == "planar":
            return self.u[f, :K], self.w[f, :K], self.b[f, :K]
        if self.family == "radial":
            return self.z0[f, :K], self.alpha[f, :K], self.beta[f, :K]
        return self.w1[f, :, :, None], self.b1[f], self.w2[f, :, None, :], self.b2[f, :, None], self.mixing[f]

    def _per_example(self, p: Tensor, n: int) -> Tensor:
        """(F, K, …) per-fit parameters → (F·n, K, …): the amortized form, one copy per sample."""
        return p.unsqueeze(1).expand(p.shape[0], n, *p.shape[1:]).reshape(p.shape[0] * n, *p.shape[1:])

    # -- the flow of every fit at once ------------------------------------------------------------
    def flow(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Apply every fit's layers to its own samples: z (F, n, 2) → (z_K (F, n, 2), log_det (F, n))."""
        F_, n, _ = z.shape
        params = self._masked()
        if self.family == "nice":
            return nice_fits(z, *params), z.new_zeros(F_, n)
        transform = flows.planar if self.family == "planar" else flows.radial
        out, log_det = transform(z.reshape(F_ * n, 2), *(self._per_example(p, n) for p in params))
        return out.reshape(F_, n, 2), log_det.reshape(F_, n)

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterized z0 = μ + σ·ε of shape (F, n, 2) and ln q0(z0) of shape (F, n)."""
        eps = torch.randn(self.n_fits, n, 2, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        z = self.mean[:, None] + torch.exp(self.log_std)[:, None] * eps
        log_q0 = -0.5 * (eps.square() + LOG_2PI).sum(-1) - self.log_std.sum(-1)[:, None]
        return z, log_q0

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """z_K ~ q_K, shape (F, n, 2), and ln q_K(z_K) = ln q0(z0) − log_det (eq. 7), shape (F, n)."""
        z0, log_q0 = self.base_sample(n, generator)
        zK, log_det = self.flow(z0)
        return zK, log_q0 - log_det

    # -- one fit at a time, for evaluation with many samples (no copies of the parameters) -------
    def _fit_flow(self, f: int, z: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        fn = {("planar", False): flows.planar, ("radial", False): flows.radial,
              ("nice", False): flows.additive_coupling, ("radial", True): flows.radial_inverse,
              ("nice", True): flows.additive_coupling_inverse,
              # 60 bisection steps shrink the bracket by 2⁻⁶⁰: far below float32 resolution
              ("planar", True): lambda y, *p: flows.planar_inverse(y, *p, iters=60)}[(self.family, inverse)]
        return fn(z, *self.fit_params(f))

    def sample_fit(self, f: int, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples of fit f alone: z_K (n, 2) and ln q_K(z_K) (n,)."""
        eps = torch.randn(n, 2, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        z0 = self.mean[f] + torch.exp(self.log_std[f]) * eps
        log_q0 = -0.5 * (eps.square() + LOG_2PI).sum(-1) - self.log_std[f].sum()
        zK, log_det = self._fit_flow(f, z0)
        return zK, log_q0 - log_det

    def log_prob_fit(self, f: int, y: Tensor) -> Tensor:
        """ln q_K(y) of fit f at points y (n, 2), through the inverse flow: ln q0(f⁻¹(y)) + ln|det ∂f⁻¹/∂y|."""
        z0, log_det = self._fit_flow(f, y, inverse=True)
        eps = (z0 - self.mean[f]) * torch.exp(-self.log_std[f])
        return -0.5 * (eps.square() + LOG_2PI).sum(-1) - self.log_std[f].sum() + log_det


def build_groups(config: FitConfig, extra: Sequence[Label] = ()) -> list[FitGroup]:
    """The groups of ``config``: one planar and one radial group over every K, one NICE group per K.

    ``extra`` adds planar fits, e.g. ``("U2_raw", "planar", 8)`` for the unconfined target.
    """
    gen = torch.Generator().manual_seed(config.seed)
    labels = [(t, m, K) for m in config.methods for K in config.Ks for t in config.targets]
    labels += list(extra)
    groups = []
    for family in ("planar", "radial"):
        mine = [lab for lab in labels if FAMILY[lab[1]] == family]
        if mine:
            groups.append(FitGroup(family, mine, config.nice_hidden, gen))
    for K in config.Ks:
        mine = [lab for lab in labels if FAMILY[lab[1]] == "nice" and lab[2] == K]
        if mine:
            groups.append(FitGroup("nice", mine, config.nice_hidden, gen))
    return groups


def annealed_free_energy(groups: Sequence[FitGroup], potentials: dict[str, Callable[[Tensor], Tensor]], n: int,
                         beta: float, generator: torch.Generator | None = None
                         ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Σ over every fit of its annealed free energy F_β (eq. 15), each estimated from n samples.

    Each target's potential is called once, on the samples of all fits of that target. Returns the
    loss and, per group, the samples (z_K, ln q_K(z_K)) it used.
    """
    log_q_sum: Tensor | float = 0.0
    by_target: dict[str, list[Tensor]] = {}
    samples = []
    for g in groups:
        zK, log_q = g.sample(n, generator)
        log_q_sum = log_q_sum + log_q.sum()
        for tg, sl in g.target_slices.items():
            by_target.setdefault(tg, []).append(zK[sl].reshape(-1, 2))
        samples.append((zK, log_q))
    U_sum = sum(potentials[tg](torch.cat(zs)).sum() for tg, zs in by_target.items())
    # Σ_fits mean_samples(ln q_K + β·U): every fit has n samples, so the sums divide by n
    return (log_q_sum + beta * U_sum) / n, samples


def train(groups: Sequence[FitGroup], config: FitConfig, record_every: int = 0,
          log: Callable[[str], None] | None = None,
          after_update: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train every fit at once: one Adam optimizer on the sum of the annealed free energies (eq. 15).

    Each update draws ``config.samples`` samples per fit; the potential of each target is called
    once per update on the samples of all fits of that target. The learning rate decays
    geometrically from ``lr`` to ``lr_final``. If ``record_every`` > 0, the history holds, every
    that many updates, each fit's free energy at β = 1 on the training samples and the mean and
    standard deviation of its z_K, as ``history[field][group index][record][fit]``.
    ``after_update(t)`` is called after update t = 1, …, ``config.updates`` (e.g. to evaluate checkpoints).
    """
    potentials = {t: target_potential(t, config.confine_scale) for g in groups for t in g.target_slices}
    params = [p for g in groups for p in g.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr)
    decay = (config.lr_final / config.lr) ** (1.0 / max(config.updates - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=decay)
    gen = torch.Generator(device=params[0].device).manual_seed(config.seed + 1)
    history: dict[str, Any] = {"step": [], "beta": [], "F": [[] for _ in groups], "mean": [[] for _ in groups],
                               "std": [[] for _ in groups]}
    n = config.samples
    start = time.perf_counter()
    for t in range(config.updates):
        beta = beta_schedule(t, start=0.01, warmup=config.warmup)
        record = record_every > 0 and t % record_every == 0
        loss, samples = annealed_free_energy(groups, potentials, n, beta, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if record:
            history["step"].append(t)
            history["beta"].append(beta)
            with torch.no_grad():
                for i, (g, (zK, log_q)) in enumerate(zip(groups, samples)):
                    zK, log_q = zK.detach(), log_q.detach()
                    U = torch.stack([potentials[tg](zK[f]) for f, (tg, _, _) in enumerate(g.labels)])
                    history["F"][i].append((log_q + U).mean(-1).tolist())
                    history["mean"][i].append(zK.mean(1).tolist())
                    history["std"][i].append(zK.std(1).tolist())
        if after_update is not None:
            after_update(t + 1)
        if log is not None and (t + 1) % max(config.updates // 20, 1) == 0:
            log(f"update {t + 1}/{config.updates}  beta={beta:.3f}  loss={float(loss.detach()):.3f}  "
                f"{time.perf_counter() - start:.0f}s")
    history["train_seconds"] = time.perf_counter() - start
    return history


@torch.no_grad()
def evaluate(groups: Sequence[FitGroup], config: FitConfig, log_Z: dict[str, float],
             chunk: int = 100_000) -> list[dict[str, Any]]:
    """F at β = 1 and KL = F + ln Z for every fit, from ``config.eval_samples`` fresh samples each.

    Returns one row per fit: target, method, K, F, se and (when ln Z of the target is given) KL.
    The standard error se = std(ln q_K + U)/√N applies to F and KL alike (ln Z is exact to < 10⁻⁴).
    """
    gen = torch.Generator(device=groups[0].mean.device).manual_seed(config.seed + 2)
    rows = []
    for g in groups:
        for f, (t, m, K) in enumerate(g.labels):
            U = target_potential(t, config.confine_scale)
            s1 = s2 = 0.0
            done = 0
            while done < config.eval_samples:
                n = min(chunk, config.eval_samples - done)
                zK, log_q = g.sample_fit(f, n, gen)
                v = (log_q + U(zK)).double()
                s1 += float(v.sum())
                s2 += float(v.square().sum())
                done += n
            N = config.eval_samples
            mean = s1 / N
            se = math.sqrt(max(s2 / N - mean * mean, 0.0) / (N - 1))
            row = {"target": t, "method": m, "K": K, "F": mean, "se": se}
            if t in log_Z:
                row["KL"] = mean + log_Z[t]
            rows.append(row)
    return rows


@torch.no_grad()
def log_density_grid(group: FitGroup, f: int, n: int = 100, box: float = energies.BOX) -> Tensor:
    """ln q_K of fit f on an n×n grid of cell centres over [−box, box]²: (n, n), rows = z2, columns = z1."""
    h = 2.0 * box / n
    x = torch.linspace(-box + h / 2, box - h / 2, n, device=group.mean.device, dtype=group.mean.dtype)
    Z1, Z2 = torch.meshgrid(x, x, indexing="xy")
    return group.log_prob_fit(f, torch.stack([Z1, Z2], -1).reshape(n * n, 2)).reshape(n, n).cpu()


# ----------------------------------------------------------------------------------------------
# storing and restoring fits (for full-mode results in JSON)
# ----------------------------------------------------------------------------------------------
_PARAM_NAMES = {"planar": ("u", "w", "b"), "radial": ("z0", "alpha", "beta"),
                "nice": ("w1", "b1", "w2", "b2", "mixing")}


def fit_state(group: FitGroup, f: int, digits: int = 7) -> dict[str, Any]:
    """A JSON-ready record of fit f alone: its label, q0 and its own K layers (rounded to ``digits``
    significant digits, which float32 parameters do not exceed by much)."""
    def listed(x: Tensor) -> Any:
        return [float(f"{v:.{digits}g}") for v in x.detach().cpu().flatten().tolist()]

    target, method, K = group.labels[f]
    params = group.fit_params(f)
    return {"target": target, "method": method, "K": K, "hidden": getattr(group, "hidden", None),
            "mean": listed(group.mean[f]), "log_std": listed(group.log_std[f]),
            "params": {name: {"shape": list(p.shape), "values": listed(p)}
                       for name, p in zip(_PARAM_NAMES[group.family], params)}}


def fit_from_state(state: dict[str, Any]) -> FitGroup:
    """Rebuild a one-fit :class:`FitGroup` from :func:`fit_state` (to draw stored full-mode fits)."""
    family = FAMILY[state["method"]]
    g = FitGroup(family, [(state["target"], state["method"], state["K"])], state.get("hidden") or 32)
    with torch.no_grad():
        g.mean.copy_(torch.tensor(state["mean"]))
        g.log_std.copy_(torch.tensor(state["log_std"]))
        for name in _PARAM_NAMES[family]:
            rec = state["params"][name]
            value = torch.tensor(rec["values"]).reshape(rec["shape"])
            target = getattr(g, name)
            target.copy_(value.reshape(target.shape))
    return g


def run_experiment(config: FitConfig, device: torch.device | str = "cpu", record_every: int = 0,
                   log: Callable[[str], None] | None = None, checkpoints: Sequence[int] = ()
                   ) -> tuple[list[FitGroup], list[dict[str, Any]], dict]:
    """Build, train and evaluate every fit of ``config``; returns (groups, table rows, history).

    For each update count in ``checkpoints`` the fits are also evaluated in the middle of training, as
    ``history["checkpoints"] = [{"update": t, "rows": rows}, …]``: the convergence evidence (a fit
    whose KL no longer changes between a checkpoint and the end has converged under this schedule).
    """
    torch.manual_seed(config.seed)
    groups = [g.to(device) for g in build_groups(config)]
    log_Z = {t: energies.log_normalizer(target_potential(t, config.confine_scale)) for t in config.targets}
    done: list[dict[str, Any]] = []

    def evaluate_checkpoint(t: int) -> None:
        if t in checkpoints and t < config.updates:
            done.append({"update": t, "rows": evaluate(groups, config, log_Z)})

    history = train(groups, config, record_every=record_every, log=log, after_update=evaluate_checkpoint)
    history["checkpoints"] = done
    rows = evaluate(groups, config, log_Z)
    return groups, rows, history


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m flowbook.experiments2d --mode full`` trains every fit and writes
    ``data/results/energy2d_<mode>.json`` (KL table, history summary and the fitted parameters of
    the K shown in the chapter's figures) with provenance."""
    from flowbook import results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("fast", "full"), default="full")
    parser.add_argument("--updates", type=int, default=None, help="override the number of updates")
    parser.add_argument("--methods", nargs="*", default=None, choices=METHODS,
                        help="fit only these methods (e.g. to run planar/radial and NICE as two processes)")
    parser.add_argument("--Ks", type=int, nargs="*", default=None, help="override the flow lengths")
    parser.add_argument("--targets", nargs="*", default=None, choices=tuple(energies.POTENTIALS),
                        help="fit only these targets")
    parser.add_argument("--samples", type=int, default=None, help="override the samples per fit per update")
    parser.add_argument("--seed", type=int, default=None, help="override the seed (initialization and samples)")
    parser.add_argument("--nice-hidden", type=int, default=None, help="override the hidden units of NICE couplings")
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[],
                        help="also evaluate the KL after these updates (convergence evidence)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the fits are overhead-bound)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default=None, help="result file name (default energy2d_<mode>)")
    parser.add_argument("--store-K", type=int, nargs="*", default=[2, 8, 32],
                        help="flow lengths whose fitted parameters are stored for the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = FULL if args.mode == "full" else FAST
    if args.updates is not None:
        config = replace(config, updates=args.updates, warmup=min(config.warmup, args.updates // 2))
    if args.methods:
        config = replace(config, methods=tuple(args.methods))
    if args.Ks:
        config = replace(config, Ks=tuple(args.Ks))
    if args.targets:
        config = replace(config, targets=tuple(args.targets))
    if args.samples:
        config = replace(config, samples=args.samples)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.nice_hidden is not None:
        config = replace(config, nice_hidden=args.nice_hidden)
    start = time.perf_counter()
    record_every = max(config.updates // 100, 1)
    groups, rows, history = run_experiment(config, args.device, record_every, log=lambda s: print(s, flush=True),
                                           checkpoints=args.checkpoints)
    # the learning curve of each fit: F at β = 1 on the training samples, every record_every updates
    curves = {"step": history["step"], "F": {
        f"{t}/{m}/{K}": [round(rec[f], 4) for rec in history["F"][i]]
        for i, g in enumerate(groups) for f, (t, m, K) in enumerate(g.labels)}}
    wall = time.perf_counter() - start
    log_Z = {t: energies.log_normalizer(target_potential(t, config.confine_scale)) for t in config.targets}
    path = results.save_result(
        args.name or f"energy2d_{args.mode}",
        config={**asdict(config), "optimizer": f"Adam(lr {config.lr} decayed geometrically to {config.lr_final})",
                "loss": "sum over fits of the annealed free energy (eq. 15), beta_t = min(1, 0.01 + t/warmup)"},
        metrics={"log_Z": log_Z, "rows": rows, "checkpoints": history["checkpoints"],
                 "train_seconds": history["train_seconds"], "curves": curves,
                 "fits": [fit_state(g, f) for g in groups for f, lab in enumerate(g.labels) if lab[2] in args.store_K]},
        wall_time_s=wall, device=args.device)
    for r in rows:
        print(f"{r['method']:>9} K={r['K']:>2} {r['target']}: KL = {r['KL']:.4f} ± {r['se']:.4f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
