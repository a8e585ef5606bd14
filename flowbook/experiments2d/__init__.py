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

The per-fit parameters (F, K, ·) are repeated over that fit's samples and passed in the amortized
(batch, K, ·) form to the flow type's spec (:class:`flowbook.flows.PlanarSpec`,
:class:`~flowbook.flows.RadialSpec`, :class:`~flowbook.flows.NiceSpec`), whose forward map is
:func:`flowbook.flows.planar`, :func:`~flowbook.flows.radial` or :func:`~flowbook.flows.additive_coupling`
(NICE with per-example coupling weights and mixings); ``tests/test_experiments2d.py`` checks every fit
against its own call with shared parameters.

The losses of different fits depend on disjoint parameters, so summing them and taking one Adam
step is the same as taking one step per fit (Adam's update is per parameter).

The package has three parts: ``flowbook.experiments2d.model`` (the configuration and
:class:`FitGroup`), ``flowbook.experiments2d.training`` (training and evaluation) and
``flowbook.experiments2d.cli`` (the command line); their public names are importable from here.
Run the full-mode experiment with ``python -m flowbook.experiments2d --mode full``: the 2-D experiment is a
configuration of the runner (:mod:`flowbook.runner`), with its option checks, resumable checkpoints
(``--max-minutes``, exit status 3) and refusal to overwrite a stored result of another configuration.
"""
from flowbook.experiments2d.cli import main
from flowbook.experiments2d.model import (FAMILY, FAST, FULL, METHODS, FitConfig, FitGroup, Label, build_groups,
                                          fit_from_state, fit_state, target_potential)
from flowbook.experiments2d.training import (CHECKPOINT_KEYS, Checkpointing, annealed_free_energy, evaluate,
                                             log_density_grid, run_experiment, train)

__all__ = ["METHODS", "FAMILY", "FitConfig", "FAST", "FULL", "target_potential", "Label", "FitGroup", "build_groups",
           "annealed_free_energy", "train", "evaluate", "log_density_grid", "run_experiment", "fit_state",
           "fit_from_state", "main", "Checkpointing", "CHECKPOINT_KEYS"]
