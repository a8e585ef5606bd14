"""The 2-D fits of Figure 3 (§6.1) as modules: the experiment's configuration and :class:`FitGroup`, many
independent fits of one flow type with an explicit fit axis, run by the flow type's spec
(:class:`flowbook.flows.FlowSpec`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from flowbook import energies, flows
from flowbook.gaussian import diagonal_normal_log_prob, repeat_per_sample, reparameterize
from flowbook.runid import LATER_FIELDS, config_digest

__all__ = ["METHODS", "FAMILY", "FitConfig", "FAST", "FULL", "target_potential", "Label", "FitGroup",
           "build_groups", "fit_state", "fit_from_state"]

#: the methods of Figure 3, those of the flow types that :mod:`flowbook.flows` itself defines (planar, radial,
#: NICE): the default of :attr:`FitConfig.methods`, so that the flow types other modules register
#: (:mod:`flowbook.householder`, ...) are fitted where they are named and chapter 4's run stays Figure 3's.
#: Every method registered, with its flow type and options, is in :func:`flowbook.flows.variants`
METHODS = tuple(m for m, (flow, _) in flows.variants().items() if flows.SPECS[flow].__module__ == flows.__name__)
#: the flow type (a key of :data:`flowbook.flows.SPECS`) of each method in :data:`METHODS`
FAMILY = {m: flow for m, (flow, _) in flows.variants().items()}

@dataclass(frozen=True)
class FitConfig:
    """Everything that defines one batched experiment (stored with the results as provenance).

    It is the 2-D experiment's configuration of the runner (:class:`flowbook.runid.RunConfig`): its
    methods name the checkpoints and recognize a stored result of the same configuration. Methods are not
    fields, so they never change :meth:`digest`."""

    targets: tuple[str, ...] = ("U1", "U2", "U3", "U4")
    methods: tuple[str, ...] = METHODS
    Ks: tuple[int, ...] = (2, 8, 32)
    updates: int = 1200          # optimizer steps
    samples: int = 128           # Monte Carlo samples of z0 per fit per step
    lr: float = 1e-2             # Adam's initial learning rate ...
    lr_final: float = 1e-3       # ... decayed geometrically to this value at the last update
    warmup: int = 500            # β_t = min(1, 0.01 + t/warmup): the annealing of §6
    nice_hidden: int = 16        # hidden units of each NICE coupling MLP (and of any type with a `hidden`)
    eval_samples: int = 100_000  # samples for the reported F and KL
    seed: int = 0
    confine_scale: float = energies.CONFINE_SCALE
    # the flow types' own options (flowbook.flows.options_of), sorted (name, value) pairs: each type gets
    # those it has (flowbook.flows.options_for), and each option must be one of some method's type
    flow_options: tuple[tuple[str, Any], ...] = ()  # flowbook.flows.as_options

    def __post_init__(self) -> None:
        known = flows.variants()
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ValueError(f"FitConfig: unknown methods {bad}; choose from {tuple(known)}")
        try:
            options = flows.check_run_options([known[m][0] for m in self.methods], self.flow_options)
        except ValueError as err:
            raise ValueError(f"FitConfig: {err}") from None
        object.__setattr__(self, "flow_options", options)
        bad = [t for t in self.targets if t not in energies.POTENTIALS]
        if bad:
            raise ValueError(f"FitConfig: unknown targets {bad}; choose from {tuple(energies.POTENTIALS)}")
        if min(self.Ks, default=0) < 1 or self.updates < 1 or self.samples < 2:
            raise ValueError(f"FitConfig needs every K ≥ 1, updates ≥ 1 and samples ≥ 2, got Ks={self.Ks}, "
                             f"updates={self.updates}, samples={self.samples}")

    def digest(self) -> str:
        """:func:`flowbook.runid.config_digest` of the fields (``eval_samples`` left out, as for the DLGMs)."""
        return config_digest(asdict(self))

    @staticmethod
    def trained_config(result_config: dict) -> dict:
        """The fields of a :class:`FitConfig` in a result's ``config``, which holds them at its top level
        next to the optimizer's and the loss's descriptions (KeyError when one is missing)."""
        # a field added later (LATER_FIELDS) is absent from the results stored before it: its neutral value
        later = {n: result_config.get(n, v) for n, v in LATER_FIELDS.items()}
        return {f.name: later[f.name] if f.name in later else result_config[f.name] for f in fields(FitConfig)}

    def checkpoint_stem(self) -> str:
        """``energy2d_<methods>_K<Ks>``, e.g. ``energy2d_planar-radial_K2-8-32``: the checkpoint's name before
        its digest (:func:`flowbook.checkpoints.checkpoint_path`)."""
        return f"energy2d_{'-'.join(self.methods)}_K{'-'.join(map(str, self.Ks))}"



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
# one group: many fits of one flow type, with an explicit fit axis
# ----------------------------------------------------------------------------------------------
Label = tuple[str, str, int]  # (target, method, K)


class FitGroup(nn.Module):
    """Independent fits of one flow type (a key of :data:`flowbook.flows.SPECS`), with a fit axis.

    ``labels[f] = (target, method, K)``, sorted by target so that each target's fits are one slice.
    Parameters carry the fit axis first, then the shapes of the flow type's spec (``spec``,
    :class:`flowbook.flows.PlanarSpec`, ...): the q0 mean and log-std are (F, 2); planar u, w are
    (F, Kmax, 2) and b is (F, Kmax); radial z0 is (F, Kmax, 2), α and β are (F, Kmax); NICE w1 is
    (F, K, H, 1), b1 (F, K, H), w2 (F, K, 1, H), b2 (F, K, 1) and the fixed mixing (F, K, 2, 2)
    (orthogonal or permutation matrices). :meth:`flow` repeats each fit's parameters over its samples
    and runs the spec's forward map once for the whole group, in the per-example (amortized) form.

    Planar and radial fits (types that pad, :attr:`~flowbook.flows.FlowSpec.pads_layers`) of different K
    share one group: layers k ≥ K_f of fit f are made exact
    identities (:meth:`flowbook.flows.FlowSpec.mask_layers`). This pads the short fits, which costs
    arithmetic but not operations, and on a CPU these fits are bound by the number of operations
    (about 10 µs each), not by arithmetic: one group of 32 layers is cheaper than six groups of
    1 + 2 + … + 32 = 63 layers. A NICE group holds one K only: padding a short fit to 32 layers of H
    hidden units would cost real arithmetic, unlike a padded planar layer.
    """

    def __init__(self, family: str, labels: Sequence[Label], nice_hidden: int = 32,
                 generator: torch.Generator | None = None, flow_options: tuple[tuple[str, Any], ...] = ()):
        super().__init__()
        if family not in flows.SPECS:
            raise ValueError(f"FitGroup: family must be one of {tuple(flows.SPECS)}, got {family!r}")
        labels = sorted((str(t), str(m), int(k)) for t, m, k in labels)
        if not labels:
            raise ValueError("FitGroup needs at least one (target, method, K) label")
        known = flows.variants()
        if any(known.get(m, ("",))[0] != family for _, m, _ in labels):
            raise ValueError(f"FitGroup({family}): labels {labels} contain methods of another family")
        Ks = [k for _, _, k in labels]
        if not flows.SPECS[family].pads_layers and len(set(Ks)) != 1:
            raise ValueError(f"FitGroup({family}) holds one K only (build one group per K), got Ks {sorted(set(Ks))}")
        self.family, self.labels, self.K = family, labels, max(Ks)
        n, K = len(labels), self.K
        # the reference planar map (autograd: these fits are small, and its graph is cheap to record);
        # 60 bisection steps in the planar inverse shrink the bracket by 2⁻⁶⁰, far below float32 resolution
        # (``flow_options``: the type's own options, e.g. from the command line, which take precedence)
        self.flow_options = flows.options_for(family, flow_options)
        options = {"hidden": nice_hidden, "impl": "autograd", "inverse_iters": 60, **dict(self.flow_options)}
        self.spec = flows.spec_for(family, 2, K, **options)
        self.hidden = getattr(self.spec, "hidden", None)
        # slices of the fit axis that belong to each target (labels are sorted by target)
        self.target_slices: dict[str, slice] = {}
        for f, (t, _, _) in enumerate(labels):
            s = self.target_slices.get(t)
            self.target_slices[t] = slice(f if s is None else s.start, f + 1)
        self.register_buffer("layer_mask", (torch.arange(K)[None, :] < torch.tensor(Ks)[:, None]).float())
        self.mean = nn.Parameter(torch.zeros(n, 2))
        self.log_std = nn.Parameter(torch.zeros(n, 2))
        if self.spec.buffers:
            # each fit's fixed tensors (e.g. NICE's mixings), drawn with its method's options
            drawn = []
            for _, method, _ in labels:
                own = flows.spec_for(family, 2, K, **{**options, **known[method][1]})
                drawn.append(own.matrix_buffers(own.draw_buffers(generator)))
            for name in self.spec.buffers:
                self.register_buffer(name, torch.stack([d[name] for d in drawn]))
        for name, value in self.spec.free_start(batch=(n,), generator=generator).items():
            setattr(self, name, nn.Parameter(value))

    @property
    def n_fits(self) -> int:
        return len(self.labels)

    # -- parameters in the forms the spec takes ---------------------------------------------------
    def params(self) -> dict[str, Tensor]:
        """Every fit's flow parameters (and mixings) by the spec's names, with the fit axis first."""
        return {n: getattr(self, n) for n in self.spec.names}

    def fit_params(self, f: int) -> dict[str, Tensor]:
        """Fit f's own K_f layers in the shared-parameter form of :mod:`flowbook.flows`
        (planar: u, w (K, 2), b (K,); radial: z0, α, β; NICE: w1, b1, w2, b2, mixing of one 2-D flow)."""
        K = self.labels[f][2]
        return {n: p[f, :K] for n, p in self.params().items()}

    # -- the flow of every fit at once ------------------------------------------------------------
    def flow(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Apply every fit's layers to its own samples: z (F, n, 2) → (z_K (F, n, 2), log_det (F, n))."""
        F_, n, _ = z.shape
        params = self.spec.mask_layers(self.params(), self.layer_mask)
        # (F, K, …) per-fit parameters → (F·n, K, …), one copy per sample: the amortized form
        per_example = {k: repeat_per_sample(p, n, samples_first=False) for k, p in params.items()}
        out, log_det = self.spec.forward(z.reshape(F_ * n, 2), per_example)
        return out.reshape(F_, n, 2), log_det.reshape(F_, n)

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterized z0 = μ + σ·ε of shape (F, n, 2) and ln q0(z0) of shape (F, n)."""
        eps = torch.randn(self.n_fits, n, 2, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return reparameterize(self.mean[:, None], self.log_std[:, None], eps)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """z_K ~ q_K, shape (F, n, 2), and ln q_K(z_K) = ln q0(z0) − log_det (eq. 7), shape (F, n)."""
        z0, log_q0 = self.base_sample(n, generator)
        zK, log_det = self.flow(z0)
        return zK, log_q0 - log_det

    # -- one fit at a time, for evaluation with many samples (no copies of the parameters) -------
    def sample_fit(self, f: int, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples of fit f alone: z_K (n, 2) and ln q_K(z_K) (n,)."""
        eps = torch.randn(n, 2, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        z0, log_q0 = reparameterize(self.mean[f], self.log_std[f], eps)
        zK, log_det = self.spec.forward(z0, self.fit_params(f))
        return zK, log_q0 - log_det

    def log_prob_fit(self, f: int, y: Tensor) -> Tensor:
        """ln q_K(y) of fit f at points y (n, 2), through the inverse flow: ln q0(f⁻¹(y)) + ln|det ∂f⁻¹/∂y|."""
        z0, log_det = self.spec.inverse(y, self.fit_params(f))
        return diagonal_normal_log_prob(z0, self.mean[f], self.log_std[f]) + log_det


def build_groups(config: FitConfig, extra: Sequence[Label] = ()) -> list[FitGroup]:
    """The groups of ``config``, by flow type in the order of :data:`flowbook.flows.SPECS`: one group over
    every K of a type that pads its layers (planar, radial), one group per K of one that does not (NICE).

    ``extra`` adds planar fits, e.g. ``("U2_raw", "planar", 8)`` for the unconfined target.
    """
    gen = torch.Generator().manual_seed(config.seed)
    labels = [(t, m, K) for m in config.methods for K in config.Ks for t in config.targets]
    labels += list(extra)
    groups = []
    for family, cls in flows.SPECS.items():
        mine = [lab for lab in labels if flows.variants()[lab[1]][0] == family]
        # a type that pads its layers fits every K in one group; one that does not, one group per K
        for K in ([None] if cls.pads_layers else config.Ks):
            part = [lab for lab in mine if K is None or lab[2] == K]
            if part:
                groups.append(FitGroup(family, part, config.nice_hidden, gen, config.flow_options))
    return groups


# ----------------------------------------------------------------------------------------------
# storing and restoring fits (for full-mode results in JSON)
# ----------------------------------------------------------------------------------------------
def fit_state(group: FitGroup, f: int, digits: int = 7) -> dict[str, Any]:
    """A JSON-ready record of fit f alone: its label, q0 and its own K layers (rounded to ``digits``
    significant digits, which float32 parameters do not exceed by much)."""
    def listed(x: Tensor) -> Any:
        return [float(f"{v:.{digits}g}") for v in x.detach().cpu().flatten().tolist()]

    target, method, K = group.labels[f]
    params = group.fit_params(f)
    options = {"flow_options": [list(p) for p in group.flow_options]} if group.flow_options else {}
    return {"target": target, "method": method, "K": K, "hidden": getattr(group, "hidden", None), **options,
            "mean": listed(group.mean[f]), "log_std": listed(group.log_std[f]),
            "params": {name: {"shape": list(p.shape), "values": listed(p)}
                       for name, p in params.items()}}


def fit_from_state(state: dict[str, Any]) -> FitGroup:
    """Rebuild a one-fit :class:`FitGroup` from :func:`fit_state` (to draw stored full-mode fits)."""
    family = flows.variants()[state["method"]][0]
    g = FitGroup(family, [(state["target"], state["method"], state["K"])], state.get("hidden") or 32,
                 flow_options=flows.as_options(state.get("flow_options", ())))
    with torch.no_grad():
        g.mean.copy_(torch.tensor(state["mean"]))
        g.log_std.copy_(torch.tensor(state["log_std"]))
        for name in g.spec.names:
            rec = state["params"][name]
            value = torch.tensor(rec["values"]).reshape(rec["shape"])
            target = getattr(g, name)
            target.copy_(value.reshape(target.shape))
    return g


