"""The deep latent Gaussian model (DLGM) of the paper's §6.2 with amortized flows (§4.2).

Generative model: z ~ N(0, I) with 40 latent variables, then a decoder MLP with maxout units gives
the likelihood p(x | z): Bernoulli for binarized MNIST (Table 2), or logit-normal for continuous
data in (0, 1) (CIFAR-10, Table 3). Inference model: an encoder MLP with the same kind of units maps
x to the mean and standard deviation of q0(z0 | x) = N(μ(x), diag σ²(x)) *and* to the parameters of
every flow layer, per data point, so the flow itself is amortized; z_K = f_K ∘ … ∘ f_1(z0) and
ln q_K(z_K | x) = ln q0(z0 | x) − Σ_k ln|det ∂f_k/∂z_{k−1}| (eq. 7).

Reading of "400 hidden units with maxout over windows of 4". The text allows two readings: 400
maxout *outputs* (each the max of 4 pre-activations, so 1600 pre-activations per layer), or 400
*pre-activations* (100 maxout outputs). This module uses **400 pre-activations → 100 outputs** by
default (``maxout_units="pre_activations"``). Why: under the other reading the network alone takes
≈22 ms per update on two CPU cores, more than a whole K = 80 update should cost for Table 2 to be trained
on a CPU (about 20 ms, with K = 0 at 7 ms); only the 400-pre-activation network fits that budget. The
other reading is one option away (``maxout_units="outputs"``) so that it can be run where compute is
cheap (a GPU); chapter 5 compares the two in short paired runs.

Depth: two maxout layers in the encoder (784 → h → h) and two in the decoder (40 → h → h → 784
logits).

Amortized flow parameters (one linear head on the encoder's last hidden layer per flow type):

* planar: u, w of shape (B, K, 40) and b of shape (B, K), fed to :func:`flowbook.flows.planar_chain`
  (the map of :func:`flowbook.flows.planar` with a hand-written backward, compiled on a CPU);
* radial: z0 (B, K, 40) and raw α, β (B, K), fed to :func:`flowbook.flows.radial`;
* NICE: the paper does not say which NICE parameters are amortized. Here the coupling MLPs'
  *weights* are shared by all data points (global parameters, as in Dinh et al.) and their *biases*
  b1 (B, K, H) and b2 (B, K, 20) come from the encoder, per data point; with a fixed random
  orthogonal mixing before each coupling (:func:`flowbook.flows.additive_coupling`). Amortizing
  full weight matrices would cost K·H·40 outputs per data point; shifting the hidden units per
  data point is the cheapest way to make the coupling depend on x.

The layout of each head's output, which parameters are global, and the identity start come from the
flow type's spec (:class:`flowbook.flows.PlanarSpec`, :class:`~flowbook.flows.RadialSpec`,
:class:`~flowbook.flows.NiceSpec`). Every head starts near the identity flow (small weights, and a
bias at which the flow is the identity), so a model with K layers starts where the K = 0 model starts.

:class:`MultiDLGM` holds R such models (the rows of Table 2) with their common-shape parameters
stacked along a leading row axis, so that one process trains them together, on the same minibatch,
with batched matrix products.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from . import flows
from .gaussian import LOG_2PI, repeat_per_sample, reparameterize
from .objectives import free_energy

__all__ = ["DLGMConfig", "FreeEnergyModel", "DLGM", "MultiDLGM", "LIKELIHOODS",
           "bernoulli_log_likelihood", "logit_normal_log_likelihood", "standard_normal_log_prob"]

LIKELIHOODS = ("bernoulli", "logit_normal")


@dataclass(frozen=True)
class DLGMConfig:
    """Architecture of one DLGM row. ``flow`` a key of :data:`flowbook.flows.SPECS`, ``K`` layers (0: no flow).

    ``hidden`` and ``window`` describe the maxout layers; ``maxout_units`` says what ``hidden`` counts
    (see the module docstring): ``"pre_activations"`` (hidden/window outputs) or ``"outputs"``.
    ``logit_normal_variance``: ``"per_dim"`` (one learned σ per data dimension, the default) or
    ``"amortized"`` (the decoder outputs σ(z) too). ``flow_options``: the flow type's own options
    (:func:`flowbook.flows.options_of`, e.g. ``(("hidden", 64),)`` for NICE), as sorted (name, value)
    pairs (a mapping or JSON's lists are accepted and converted); an empty one is left out of
    :meth:`to_dict`, so the stored rows, which predate it, keep their configs. ``nice_hidden`` is the
    NICE width the stored rows name, and the default ``hidden`` of every flow type that has one (IAF's
    MADE too); a ``hidden`` in ``flow_options`` takes its place.
    """
    flow: str = "planar"
    K: int = 0
    data_dim: int = 784
    latent: int = 40
    hidden: int = 400
    window: int = 4
    maxout_units: Literal["pre_activations", "outputs"] = "pre_activations"
    likelihood: Literal["bernoulli", "logit_normal"] = "bernoulli"
    logit_normal_variance: Literal["per_dim", "amortized"] = "per_dim"
    nice_hidden: int = 40
    seed: int = 0
    flow_options: tuple[tuple[str, Any], ...] = ()  # flowbook.flows.as_options

    def __post_init__(self) -> None:
        if self.flow not in flows.SPECS:
            raise ValueError(f"DLGMConfig: flow must be one of {tuple(flows.SPECS)}, got {self.flow!r}")
        if self.K < 0:
            raise ValueError(f"DLGMConfig: K must be ≥ 0, got {self.K}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"DLGMConfig: likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.maxout_units not in ("pre_activations", "outputs"):
            raise ValueError("DLGMConfig: maxout_units must be 'pre_activations' (400 → 100 outputs) or "
                             f"'outputs' (1600 → 400 outputs), got {self.maxout_units!r}")
        if self.logit_normal_variance not in ("per_dim", "amortized"):
            raise ValueError(f"DLGMConfig: logit_normal_variance must be 'per_dim' or 'amortized', "
                             f"got {self.logit_normal_variance!r}")
        if self.maxout_units == "pre_activations" and self.hidden % self.window:
            raise ValueError(f"DLGMConfig: hidden={self.hidden} pre-activations must be a multiple of "
                             f"window={self.window}")
        try:
            object.__setattr__(self, "flow_options", flows.check_options(self.flow, self.flow_options))
            self.flow_spec()  # the spec checks the options' values (e.g. a planar impl)
        except ValueError as err:
            raise ValueError(f"DLGMConfig: {err}") from None

    @property
    def pre_activations(self) -> int:
        return self.hidden if self.maxout_units == "pre_activations" else self.hidden * self.window

    @property
    def maxout_outputs(self) -> int:
        return self.pre_activations // self.window

    @property
    def trunk(self) -> tuple:
        """What rows of a :class:`MultiDLGM` must share (everything but the flow)."""
        return (self.data_dim, self.latent, self.hidden, self.window, self.maxout_units,
                self.likelihood, self.logit_normal_variance)

    def flow_spec(self) -> flows.FlowSpec:
        """The spec of this row's flow (:func:`flowbook.flows.spec_for`) on the latent space."""
        return flows.spec_for(self.flow, self.latent, self.K, **{"hidden": self.nice_hidden, **dict(self.flow_options)})

    def flow_param_count(self) -> int:
        """Outputs of the amortized flow head per data point."""
        return self.flow_spec().head_size()

    def label(self) -> str:
        return "diagonal" if self.K == 0 else f"{self.flow}-K{self.K}"

    def to_dict(self) -> dict:
        """The fields as plain JSON values (``flow_options`` as lists, left out when empty)."""
        out = asdict(self)
        options = out.pop("flow_options")
        return {**out, "flow_options": [list(p) for p in options]} if options else out


def maxout(a: Tensor, window: int) -> Tensor:
    """Max over consecutive groups of ``window`` units of the last axis (Goodfellow et al., 2013)."""
    return a.unflatten(-1, (a.shape[-1] // window, window)).amax(-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """ln N(z; 0, I) summed over the last axis: the DLGM's prior p(z)."""
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * LOG_2PI)


class _BernoulliLogLikelihood(torch.autograd.Function):
    """Σ_d x_d l_d − softplus(l_d) over the last axis, with the gradient x − σ(l) in one step.

    softplus(l) = max(l, 0) + ln(1 + e^(−|l|)), with ``log`` rather than ``log1p``: PyTorch's CPU
    ``log1p`` is not vectorized, and through ``binary_cross_entropy_with_logits`` it took a fifth of a
    stored-protocol update and most of an importance-sampled evaluation (benchmarks/update_speed.py).
    As 1 + e^(−|l|) lies in (1, 2], rounding it costs at most one ulp of the result per pixel. The
    backward is the closed form rather than autograd through max and |·|, whose subgradients at l = 0
    would give x instead of x − 1/2.
    """

    @staticmethod
    def forward(ctx, x: Tensor, logits: Tensor) -> Tensor:
        ctx.save_for_backward(x, logits)
        # in place on one buffer: an evaluation's chunk (20 000 × 784 logits) does not fit in the cache,
        # and every fresh buffer of that size is another pass through memory
        out = logits.abs().neg_().exp_().add_(1).log_()
        return out.add_(logits.clamp(min=0)).addcmul_(x, logits, value=-1).sum(-1).neg_()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, logits = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        return (logits * grad if ctx.needs_input_grad[0] else None,
                (x - torch.sigmoid(logits)) * grad if ctx.needs_input_grad[1] else None)


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """ln p(x | z) = Σ_d x_d ln σ(l_d) + (1 − x_d) ln(1 − σ(l_d)) = Σ_d x_d l_d − softplus(l_d), computed
    stably from the logits; ``x`` broadcasts against ``logits`` (e.g. (B, D) against (S, B, D))."""
    return _BernoulliLogLikelihood.apply(x.expand_as(logits), logits)


def logit_normal_log_likelihood(x: Tensor, mean: Tensor, log_sigma: Tensor) -> Tensor:
    """ln p(x | z) for x = sigmoid(y), y ~ N(mean, σ²) per dimension, x in (0, 1).

    Change of variables: ln p(x) = ln N(logit x; mean, σ²) + ln|dy/dx| with dy/dx = 1/(x(1 − x)), so
    the log-density includes −Σ_d ln(x_d(1 − x_d)). ``log_sigma`` is per dimension (D,) or per
    example and broadcasts against ``mean``.
    """
    y = torch.logit(x)
    log_jac = -(torch.log(x) + torch.log1p(-x)).sum(-1)
    e = (y - mean) * torch.exp(-log_sigma)
    return (-0.5 * (e.square() + LOG_2PI) - log_sigma).sum(-1) + log_jac


def _linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out)


class FreeEnergyModel(nn.Module):
    """The forward path of the free energy (eq. 15), written once for :class:`DLGM` and :class:`MultiDLGM`.

    For one sample z0 = μ + σ ⊙ ε per data point (Algorithm 1):

        F(x) = ln q0(z0 | x) − Σ_k ln|det ∂f_k/∂z_{k−1}| − β·[ln p(x | z_K) + ln p(z_K)].

    Subclasses supply the pieces: ``encode(x)`` (the encoder's last hidden layer h), ``q0(h)`` (μ, ln σ),
    ``amortized_flow(z0, h)`` (z_K and the log-det), ``decode(z)`` and ``log_likelihood(x, out)``.
    The noise ε is passed in (not drawn inside) so that a trainer owns every random number and can
    checkpoint its generator.
    """

    def free_energy_terms(self, x: Tensor, eps: Tensor) -> dict[str, Tensor]:
        """Per-example ln q0(z0), log-det, ln p(x | z_K) and ln p(z_K) for z0 = μ + σ ε."""
        h = self.encode(x)
        mu, log_sigma = self.q0(h)
        z0, log_q0 = reparameterize(mu, log_sigma, eps.expand_as(mu))
        zK, log_det = self.amortized_flow(z0, h)
        return {"log_q0": log_q0, "log_det": log_det,
                "log_lik": self.log_likelihood(x, self.decode(zK)), "log_prior": standard_normal_log_prob(zK)}

    def loss(self, x: Tensor, eps: Tensor, beta: float = 1.0) -> Tensor:
        """The annealed free energy (eq. 15, :func:`flowbook.objectives.free_energy`) of each row, averaged
        over the batch: shape (rows,), (1,) for one DLGM."""
        t = self.free_energy_terms(x, eps)
        return free_energy(t["log_q0"], t["log_det"], t["log_lik"] + t["log_prior"], beta, dim=-1).reshape(-1)


class AmortizedFlow:
    """The amortized flow of one row (§4.2), for a module that mixes this in.

    A head ``flow_head`` on the encoder's last hidden layer emits the per-example parameters of ``spec``
    (a :class:`flowbook.flows.FlowSpec`); the spec's global parameters and buffers are attributes named
    ``<spec.name>_<name>`` (NICE: ``nice_w1``, ``nice_w2`` and the buffer ``nice_mixing``).
    """

    spec: flows.FlowSpec
    flow_head: nn.Linear | None

    def _shared_names(self) -> list[str]:
        """The spec's global parameters and buffers (none without layers)."""
        return [n for n in self.spec.names if n not in self.spec.amortized] if self.spec.K else []

    def _init_flow(self, spec: flows.FlowSpec, in_features: int, buffer_seed: int) -> None:
        """Create the head and the global parameters at the identity flow (the spec's identity)."""
        self.spec = spec
        self.flow_head = None
        if not spec.K:
            return
        head = _linear(in_features, spec.head_size())
        start = spec.identity()
        with torch.no_grad():
            # small weights: the flow starts close to the same map for every x, at the identity's bias
            head.weight.mul_(0.01)
            head.bias.copy_(spec.flatten_amortized(start))
        self.flow_head = head
        buffers = spec.draw_buffers(torch.Generator().manual_seed(buffer_seed))
        for n in self._shared_names():
            if n in buffers:
                self.register_buffer(f"{spec.name}_{n}", buffers[n])
            else:
                setattr(self, f"{spec.name}_{n}", nn.Parameter(start[n]))

    def flow_params(self, h: Tensor) -> tuple[Tensor, ...]:
        """The amortized flow parameters for each data point, in the order of ``spec.amortized``."""
        if not self.spec.K:
            return ()
        return tuple(self.spec.split(self.flow_head(h)).values())

    def flow(self, z: Tensor, params: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """z_K and Σ_k ln|det ∂f_k/∂z_{k−1}| for z (N, D) and per-example params with leading N."""
        if not self.spec.K:
            return z, z.new_zeros(z.shape[0])
        shared = {n: getattr(self, f"{self.spec.name}_{n}") for n in self._shared_names()}
        return self.spec.forward(z, {**shared, **dict(zip(self.spec.amortized, params))})

    def amortized_flow(self, z0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """The flow of z0 with the parameters the head emits from h."""
        return self.flow(z0, self.flow_params(h))


class DLGM(AmortizedFlow, FreeEnergyModel):
    """One deep latent Gaussian model with an amortized flow posterior (see the module docstring);
    its loss is the free energy of :class:`FreeEnergyModel`."""

    def __init__(self, config: DLGMConfig):
        super().__init__()
        self.config = c = config
        # Initialize from the config's seed, independently of the global RNG: a row's parameters then
        # depend only on its config, and rows sharing a seed share their encoder and decoder at start.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            P, H, D = c.pre_activations, c.maxout_outputs, c.latent
            self.enc = nn.ModuleList([_linear(c.data_dim, P), _linear(H, P)])
            self.q0_head = _linear(H, 2 * D)
            self.dec = nn.ModuleList([_linear(D, P), _linear(H, P)])
            n_out = c.data_dim * (2 if c.likelihood == "logit_normal" and c.logit_normal_variance == "amortized" else 1)
            self.dec_out = _linear(H, n_out)
            if c.likelihood == "logit_normal" and c.logit_normal_variance == "per_dim":
                self.log_sigma_x = nn.Parameter(torch.zeros(c.data_dim))
            # the NICE mixings come from their own generator (seed + 7919), not from the global stream
            self._init_flow(c.flow_spec(), H, c.seed + 7919)

    # --- the pieces, each usable on its own (the chapter shows them one by one) -------------------
    def _as_model_dtype(self, x: Tensor) -> Tensor:
        # data arrive as float32 (flowbook.data); a model loaded or converted to float64 takes them as its own
        # type instead of failing in its first matrix product
        return x.to(self.q0_head.weight.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """The encoder's last hidden layer h(x) (two maxout layers)."""
        x = self._as_model_dtype(x)
        w = self.config.window
        for layer in self.enc:
            x = maxout(layer(x), w)
        return x

    def q0(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log standard deviation of q0(z0 | x) from h(x)."""
        mu, log_sigma = self.q0_head(h).chunk(2, -1)
        return mu, log_sigma

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output: Bernoulli logits, or the logit-normal mean (and log σ if amortized)."""
        w = self.config.window
        for layer in self.dec:
            z = maxout(layer(z), w)
        return self.dec_out(z)

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """ln p(x | z) from the decoder output ``out`` (x broadcasts against out's leading axes)."""
        return likelihood_from_output(self.config, self._as_model_dtype(x), out, getattr(self, "log_sigma_x", None))

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """ln p(x, z) = ln p(x | z) + ln p(z)."""
        return self.log_likelihood(x, self.decode(z)) + standard_normal_log_prob(z)

    def rows(self) -> list["DLGM"]:
        return [self]

    # --- sampling from q_K, for evaluation and pictures -------------------------------------------
    @torch.no_grad()
    def posterior_samples(self, x: Tensor, n: int, generator: torch.Generator | None = None
                          ) -> tuple[Tensor, Tensor, Tensor]:
        """n draws per data point: (z0, z_K, ln q_K(z_K | x)) each with leading shape (n, B)."""
        h = self.encode(x)
        mu, log_sigma = self.q0(h)
        params = self.flow_params(h)
        B, D = mu.shape
        eps = torch.randn(n, B, D, generator=generator, device=x.device, dtype=x.dtype)
        z0, log_q0 = reparameterize(mu, log_sigma, eps)
        rep = tuple(repeat_per_sample(p, n) for p in params)
        zK, log_det = self.flow(z0.reshape(n * B, D), rep)
        return z0, zK.reshape(n, B, D), log_q0 - log_det.reshape(n, B)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """x ~ p(x) by ancestral sampling; returns the means E[x | z] (Bernoulli probabilities or
        sigmoid of the logit-normal mean), which are what one shows as pictures."""
        p = next(self.parameters())
        z = torch.randn(n, self.config.latent, generator=generator, device=p.device, dtype=p.dtype)
        return self.mean_image(z)

    @torch.no_grad()
    def mean_image(self, z: Tensor) -> Tensor:
        out = self.decode(z)
        return torch.sigmoid(out[..., :self.config.data_dim])


def likelihood_from_output(c: DLGMConfig, x: Tensor, out: Tensor, log_sigma_x: Tensor | None) -> Tensor:
    if c.likelihood == "bernoulli":
        return bernoulli_log_likelihood(x, out)
    if c.logit_normal_variance == "amortized":
        mean, log_sigma = out.chunk(2, -1)
    else:
        mean, log_sigma = out, log_sigma_x
    return logit_normal_log_likelihood(x, mean, log_sigma)


class MultiDLGM(FreeEnergyModel):
    """R DLGMs trained together: the rows of Table 2 in one process, on one minibatch.

    The encoder, q0 head and decoder of every row have the same shapes, so they are stored stacked
    with a leading row axis (weights (R, in, out)) and run as batched matrix products: one large
    product for the first layer (all rows read the same x) and ``baddbmm`` afterwards. The flow heads
    and flows differ in size between rows and run row by row. Row r computes exactly what
    ``DLGM(configs[r])`` computes (up to floating-point summation order); the rows' losses are
    independent, so the gradient of their sum is each row's own gradient. The loss is the free energy
    of :class:`FreeEnergyModel`, on (R, B) tensors: ``eps`` may be (B, D), shared by the rows, or (R, B, D).
    """

    def __init__(self, configs: list[DLGMConfig]):
        super().__init__()
        if not configs:
            raise ValueError("MultiDLGM needs at least one row config")
        if len({c.trunk for c in configs}) != 1:
            raise ValueError("MultiDLGM rows must share data_dim, latent, hidden, window, maxout_units and "
                             "likelihood (only the flow may differ); train other rows in another process")
        self.configs = list(configs)
        models = [DLGM(c) for c in configs]
        self.c0 = configs[0]

        def stack_w(get) -> nn.Parameter:
            return nn.Parameter(torch.stack([get(m).weight.detach().t() for m in models]).contiguous())

        def stack_b(get) -> nn.Parameter:
            return nn.Parameter(torch.stack([get(m).bias.detach() for m in models]).unsqueeze(1).contiguous())

        getters = {"enc0": lambda m: m.enc[0], "enc1": lambda m: m.enc[1], "q0": lambda m: m.q0_head,
                   "dec0": lambda m: m.dec[0], "dec1": lambda m: m.dec[1], "out": lambda m: m.dec_out}
        self.weights = nn.ParameterDict({k: stack_w(g) for k, g in getters.items()})
        self.biases = nn.ParameterDict({k: stack_b(g) for k, g in getters.items()})
        if hasattr(models[0], "log_sigma_x"):
            self.log_sigma_x = nn.Parameter(torch.stack([m.log_sigma_x.detach() for m in models]).unsqueeze(1))
        # The per-row flow parts keep their DLGM modules; their trunk parameters are dropped so that
        # the stacked copies above are the only ones trained.
        self.flow_parts = nn.ModuleList([_FlowPart(m) for m in models])

    @property
    def R(self) -> int:
        return len(self.configs)

    def _layer(self, name: str, h: Tensor) -> Tensor:
        return torch.baddbmm(self.biases[name], h, self.weights[name])

    def encode(self, x: Tensor) -> Tensor:
        """Every row's last encoder hidden layer, (R, B, H)."""
        R, B, w = self.R, x.shape[0], self.c0.window
        W0 = self.weights["enc0"]  # (R, 784, P): one (B, 784) @ (784, R·P) product serves every row
        a = (x @ W0.transpose(0, 1).reshape(x.shape[1], -1)).view(B, R, -1).transpose(0, 1) + self.biases["enc0"]
        return maxout(self._layer("enc1", maxout(a, w)), w)

    def q0(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Every row's mean and log standard deviation of q0(z0 | x), each (R, B, D)."""
        mu, log_sigma = self._layer("q0", h).chunk(2, -1)
        return mu, log_sigma

    def amortized_flow(self, z0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Each row's own flow (the rows differ in flow type and K), stacked: (R, B, D) and (R, B)."""
        zK, log_det = zip(*(part(z0[r], h[r]) for r, part in enumerate(self.flow_parts)))
        return torch.stack(zK), torch.stack(log_det)

    def decode(self, z: Tensor) -> Tensor:
        """Every row's decoder output, (R, B, ·)."""
        w = self.c0.window
        return self._layer("out", maxout(self._layer("dec1", maxout(self._layer("dec0", z), w)), w))

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """ln p(x | z) of every row, (R, B)."""
        return likelihood_from_output(self.c0, x, out, getattr(self, "log_sigma_x", None))

    @torch.no_grad()
    def rows(self) -> list[DLGM]:
        """The R rows as stand-alone :class:`DLGM` modules (copies), e.g. for evaluation."""
        out = []
        names = {"enc0": ("enc", 0), "enc1": ("enc", 1), "dec0": ("dec", 0), "dec1": ("dec", 1)}
        for r, (c, part) in enumerate(zip(self.configs, self.flow_parts)):
            m = DLGM(c).to(self.weights["enc0"].device, self.weights["enc0"].dtype)
            for k in self.weights:
                layer = getattr(m, names[k][0])[names[k][1]] if k in names else (m.q0_head if k == "q0" else m.dec_out)
                layer.weight.copy_(self.weights[k][r].t())
                layer.bias.copy_(self.biases[k][r, 0])
            if hasattr(self, "log_sigma_x"):
                m.log_sigma_x.copy_(self.log_sigma_x[r, 0])
            part.copy_into(m)
            out.append(m)
        return out


class _FlowPart(AmortizedFlow, nn.Module):
    """A row's flow head and flow parameters (those of a :class:`DLGM` that do not stack)."""

    def __init__(self, model: DLGM):
        super().__init__()
        self.config, self.spec = model.config, model.spec
        self.flow_head = model.flow_head
        for n in self._shared_names():
            name = f"{self.spec.name}_{n}"
            if n in self.spec.buffers:
                self.register_buffer(name, getattr(model, name))
            else:
                setattr(self, name, getattr(model, name))

    def forward(self, z0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.amortized_flow(z0, h)

    @torch.no_grad()
    def copy_into(self, m: DLGM) -> None:
        if self.flow_head is not None:
            m.flow_head.load_state_dict(self.flow_head.state_dict())
        for n in self._shared_names():
            name = f"{self.spec.name}_{n}"
            getattr(m, name).copy_(getattr(self, name))
