"""Where the inference gap comes from: amortization against approximation (Cremer et al., ICML 2018).

The KL panel of the paper's Figure 4 is the *inference gap* −ELBO − (−ln p(x)) of the encoder's
posterior q_K(z | x). Following Cremer, Li & Duvenaud (2018), it splits into two parts by optimizing,
for each test digit on its own, the same family of posteriors (the mean and standard deviation of q0 and,
for a flow row, every flow parameter), starting from what the encoder emits:

    −ELBO_amortized − (−ln p) = [−ELBO_amortized − (−ELBO_local)] + [−ELBO_local − (−ln p)]
                                 amortization gap                    approximation gap

The amortization gap is what one encoder, shared by all digits, loses against the best member of its
family per digit; the approximation gap is what even that best member cannot close. A flow can only
shrink the second part directly (it enlarges the family); if the first part dominates, a longer flow
helps little until the encoder improves.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import repeat_per_sample, reparameterize
from .models import DLGM
from .objectives import free_energy, shared_draw_bounds

__all__ = ["posterior_bounds", "refine_locally", "inference_gaps"]


def _log_q_and_z(model: DLGM, mu: Tensor, log_sigma: Tensor, params: tuple[Tensor, ...], eps: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """z_K and ln q_K(z_K | x) for noise eps (S, N, D) and per-digit q0 and flow parameters (eq. 7)."""
    S, N, D = eps.shape
    z0, log_q0 = reparameterize(mu, log_sigma, eps)
    rep = tuple(repeat_per_sample(p, S) for p in params)
    zK, log_det = model.flow(z0.reshape(S * N, D), rep)
    return zK.reshape(S, N, D), log_q0 - log_det.reshape(S, N)


@torch.no_grad()
def posterior_bounds(model: DLGM, x: Tensor, mu: Tensor, log_sigma: Tensor, params: tuple[Tensor, ...],
                     samples: int, seed: int = 0, chunk: int = 100) -> tuple[Tensor, Tensor]:
    """Per-digit −ELBO and importance-sampled −ln p(x) (S = ``samples``) of the posterior with these
    parameters, from the same draws (as :func:`flowbook.trainer.evaluate`)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def propose(n: int) -> tuple[Tensor, Tensor]:
        eps = torch.randn(n, *mu.shape, generator=gen, device=x.device, dtype=x.dtype)
        return _log_q_and_z(model, mu, log_sigma, params, eps)

    return shared_draw_bounds(propose, lambda z: model.log_joint(x, z), samples, chunk)


def refine_locally(model: DLGM, x: Tensor, steps: int = 300, samples: int = 16, lr: float = 1e-2,
                   seed: int = 0) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Optimize q's parameters for each digit of ``x`` separately (the model stays fixed), starting
    from the encoder's output: Adam on the free energy with ``samples`` fresh draws per step.
    Returns (mu, log_sigma, flow params), each with a leading digit axis."""
    with torch.no_grad():
        h = model.encode(x)
        mu, log_sigma = model.q0(h)
        params = model.flow_params(h)
    local = [t.detach().clone().requires_grad_(True) for t in (mu, log_sigma, *params)]
    opt = torch.optim.Adam(local, lr=lr)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            eps = torch.randn(samples, *mu.shape, generator=gen, device=x.device, dtype=x.dtype)
            zK, log_q = _log_q_and_z(model, local[0], local[1], tuple(local[2:]), eps)
            # digits are independent: the sum over digits gives each digit its own gradient
            loss = free_energy(log_q, torch.zeros_like(log_q), model.log_joint(x, zK), dim=0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p, g in zip(model.parameters(), frozen):
            p.requires_grad_(g)
    return local[0].detach(), local[1].detach(), tuple(t.detach() for t in local[2:])


def inference_gaps(model: DLGM, x: Tensor, steps: int = 300, samples: int = 1000, seed: int = 0
                   ) -> dict[str, float]:
    """Mean −ELBO of the encoder's posterior and of the locally refined one, the best −ln p(x) estimate
    (the larger of the two importance-sampled ln p per digit, both lower bounds in expectation), and
    the two gaps (module docstring), in nats averaged over the digits of ``x``."""
    with torch.no_grad():
        h = model.encode(x)
        amortized = (*model.q0(h), model.flow_params(h))
    elbo_a, nlp_a = posterior_bounds(model, x, amortized[0], amortized[1], amortized[2], samples, seed)
    mu, log_sigma, params = refine_locally(model, x, steps=steps, seed=seed + 1)
    elbo_l, nlp_l = posterior_bounds(model, x, mu, log_sigma, params, samples, seed)
    nlp = torch.minimum(nlp_a, nlp_l)
    return {"neg_elbo_amortized": elbo_a.mean().item(), "neg_elbo_local": elbo_l.mean().item(),
            "neg_log_p": nlp.mean().item(), "amortization_gap": (elbo_a - elbo_l).mean().item(),
            "approximation_gap": (elbo_l - nlp).mean().item(), "digits": int(x.shape[0]),
            "samples": samples, "steps": steps}
