"""A fast planar chain: the same map as :func:`flowbook.flows.planar`, with a hand-written backward.

Reached through :func:`flowbook.flows.planar_chain` (``impl="fused"``, ``"native"`` or ``"auto"``).

Why it exists. A chain of K planar layers on a batch of 100 points in 40 dimensions does very little
arithmetic per layer (a few thousand multiply-adds), so on a CPU its cost is the number of tensor
operations that autograd records and replays, not the flops. :func:`flowbook.flows.planar` is the
readable reference (about 6 recorded operations per layer forward, twice as many backward).
:func:`planar_chain` runs the same loop with 3–4 in-place operations per layer forward and 3 backward:

* forward (no graph recorded) keeps every z_{k−1} in one layer-major (K+1, batch, D) buffer and the
  pre-activations a_k = w_kᵀz_{k−1} + b_k in a (K, batch) buffer;
* backward walks k = K..1 with the adjoint of eq. 10, ∂L/∂z_{k−1} = ∂L/∂z_k + g_a,k·w_k where
  g_a,k = ⟨∂L/∂z_k, û_k⟩·(1 − tanh²a_k) + ∂L/∂a_k, and afterwards forms the parameter gradients for
  all layers at once from the stored buffers: ∂L/∂û_k = ∂L/∂z_k·tanh a_k, ∂L/∂w_k = g_a,k·z_{k−1},
  ∂L/∂b_k = g_a,k.

Two implementations of that backward, with the same numbers (tested to 1e−10 in float64):

* per-example (amortized, §4.2) parameters on a CPU go to C kernels (``flowbook/kernels/csrc/planar_chain.c``,
  built on first use by :mod:`flowbook.kernels.native`): one loop over examples and layers, forward and
  backward, with no per-layer tensor operations at all. The forward keeps only tanh a_k; the backward
  rebuilds each example's z_0 … z_{K−1} from it in a small scratch buffer that stays in cache. For
  K = 80, D = 40, batch 100 this is several times faster again than the loop below
  (``benchmarks/flows.py``, case (c));
* everything else (shared parameters, GPUs, no C compiler) runs the PyTorch loop described above.

The constraint û = u + s·w (Appendix A) is formed inside the Function from the reference's own
scalar map (wᵀu, ‖w‖²) ↦ (s, 1 + wᵀû), and its backward is split the same way: the (batch, K)
scalar part by autograd on that same function, the (batch, K, D) vector part by hand in four fused
multiply-adds (autograd would spend about twice as many passes over those large tensors). The
log-det Σ_k ln(1 + h′(a_k)·w_kᵀû_k) (eq. 12) is the reference's function, applied to the returned
pre-activations outside the Function. The tests check values and every gradient against
:func:`flowbook.flows.planar` to 1e−10 in float64 and run ``torch.autograd.gradcheck``.

Limitation: the backward is itself not differentiable (no double backward, no ``torch.func``
transforms); use :func:`flowbook.flows.planar` for Hessians or gradient penalties.
"""
from __future__ import annotations

import torch
from torch import Tensor

from flowbook.flowmath import check_planar, planar_log_det, planar_scale, planar_u_hat
from flowbook.kernels import native

__all__ = ["planar_chain", "kernel_usable"]

_NO_DOUBLE_BACKWARD = ("planar_chain's backward is not differentiable (create_graph=True was asked for, e.g. "
                       "for a Hessian or a gradient penalty); use flowbook.flows.planar_chain(..., impl='autograd') or "
                       "Planar(..., impl='autograd'), which supports double backward")


class _PlanarChain(torch.autograd.Function):
    """(z_0, raw u, w, b) ↦ (z_K, a, 1 + wᵀû) for K planar layers.

    Parameters are either all shared, u and w of shape (K, D) and b of shape (K,), or all per example,
    (batch, K, D) and (batch, K) (possibly broadcast views). a is returned as (K, batch).
    """

    @staticmethod
    def forward(ctx, z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shared = b.dim() == 1
        K = b.shape[-1]
        batch, D = z.shape
        # the constraint of Appendix A, û = u + s·w, exactly as planar_constrain computes it
        u_hat, one_plus_wu_hat, wu, w2, scale = planar_u_hat(u, w)
        # Every per-layer slice the loops touch is made contiguous, layer-major: Z[k] = z_k, the input of
        # layer k + 1, and the per-example parameters as (K, batch, D). On a CPU an operation on a
        # strided (batch, D) slice of a (batch, K, D) tensor costs about twice one on a contiguous
        # slice, and the loops are nothing but such small operations; one transposing copy per
        # call is cheaper than 80 strided ones.
        Z = z.new_empty(K + 1, batch, D)
        A = z.new_empty(K, batch)  # pre-activations a_k
        T = z.new_empty(K, batch)  # tanh a_k
        Z[0].copy_(z)
        zs, As, Ts = Z.unbind(0), A.unbind(0), T.unbind(0)
        t_cols = T.unsqueeze(-1).unbind(0)  # (batch, 1) views of the same rows, made once, not per layer
        if shared:
            u_layers, w_layers, b_layers = u_hat, w, b
        else:
            u_layers = u_hat.transpose(0, 1).contiguous()
            w_layers = w.transpose(0, 1).contiguous()
            b_layers = b.t().contiguous()
        us, ws, bs = u_layers.unbind(0), w_layers.unbind(0), b_layers.unbind(0)
        for k in range(K):
            if shared:  # one matrix-vector product gives w_kᵀz + b_k for the whole batch
                torch.addmv(bs[k], zs[k], ws[k], out=As[k])
            else:
                torch.linalg.vecdot(zs[k], ws[k], out=As[k])
                As[k].add_(bs[k])
            torch.tanh(As[k], out=Ts[k])
            torch.addcmul(zs[k], t_cols[k], us[k], out=zs[k + 1])
        ctx.save_for_backward(Z, T, u, w, u_layers, w_layers, wu, w2, scale)
        ctx.shared = shared
        return zs[K], A, one_plus_wu_hat

    @staticmethod
    def backward(ctx, g_out: Tensor, g_a_in: Tensor, g_one_plus: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if torch.is_grad_enabled():  # create_graph=True: the in-place loop below records no graph
            raise RuntimeError(_NO_DOUBLE_BACKWARD)
        Z, T, u, w, u_layers, w_layers, wu, w2, scale = ctx.saved_tensors
        shared = ctx.shared
        K = T.shape[0]
        sech2 = 1.0 - T * T
        G = torch.empty_like(Z)  # G[k] = ∂L/∂z_k
        G_a = torch.empty_like(T)  # ∂L/∂a_k, through z_k and through the log-det
        gs, gas, g_ins, s = G.unbind(0), G_a.unbind(0), g_a_in.unbind(0), sech2.unbind(0)
        ga_cols = G_a.unsqueeze(-1).unbind(0)
        gs[K].copy_(g_out)
        us, ws = u_layers.unbind(0), w_layers.unbind(0)
        for k in range(K - 1, -1, -1):
            g_t = torch.mv(gs[k + 1], us[k]) if shared else torch.linalg.vecdot(gs[k + 1], us[k])
            torch.addcmul(g_ins[k], g_t, s[k], out=gas[k])
            torch.addcmul(gs[k + 1], ga_cols[k], ws[k], out=gs[k])
        # parameter gradients for all layers at once: ∂û_k = g_k·tanh a_k, ∂w_k = g_a,k·z_{k−1}, ∂b_k = g_a,k
        if shared:
            g_u_hat = torch.einsum("kbd,kb->kd", G[1:], T)
            g_w = torch.einsum("kbd,kb->kd", Z[:-1], G_a)
            g_b = G_a.sum(1)
        else:  # back to the caller's (batch, K, D) layout
            g_u_hat = (G[1:] * T.unsqueeze(-1)).transpose(0, 1)
            g_w = (Z[:-1] * G_a.unsqueeze(-1)).transpose(0, 1)
            g_b = G_a.t()
        # back through the constraint û = u + s·w with s, 1 + wᵀû functions of wᵀu and ‖w‖²: the
        # scalar part by autograd on the same function the forward used, the vector part by hand
        g_scale = torch.linalg.vecdot(g_u_hat, w)
        with torch.enable_grad():
            wu, w2 = wu.detach().requires_grad_(), w2.detach().requires_grad_()
            g_wu, g_w2 = torch.autograd.grad(planar_scale(wu, w2), (wu, w2), (g_scale, g_one_plus))
        g_u = torch.addcmul(g_u_hat, g_wu.unsqueeze(-1), w)
        g_w.addcmul_(g_u_hat, scale.unsqueeze(-1)).addcmul_(g_wu.unsqueeze(-1), u)
        g_w.addcmul_(g_w2.unsqueeze(-1), w, value=2.0)
        return gs[0], g_u, g_w, g_b


class _PlanarChainNative(torch.autograd.Function):
    """(z_0, raw u, w, b) ↦ (z_K, a, 1 + wᵀû) with per-example parameters, by the C kernels of
    ``flowbook/kernels/csrc/planar_chain.c`` (see :mod:`flowbook.kernels.native`); a is (batch, K).

    The same split as :class:`_PlanarChain`: the C code does everything of size (batch, K, D), while
    the constraint's scalar map (wᵀu, ‖w‖²) ↦ (s, 1 + wᵀû) and its derivative are the reference's
    :func:`flowbook.flowmath.planar_scale`, run by PyTorch on (batch, K) tensors.
    """

    @staticmethod
    def forward(ctx, z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lib = native.load("planar_chain", _DTYPES[z.dtype])
        z, u, w, b = z.contiguous(), u.contiguous(), w.contiguous(), b.contiguous()
        batch, K, D = u.shape
        wu, w2 = z.new_empty(batch, K), z.new_empty(batch, K)
        lib.planar_dots(batch * K, D, u.data_ptr(), w.data_ptr(), wu.data_ptr(), w2.data_ptr())
        scale, one_plus_wu_hat = planar_scale(wu, w2)
        scale = scale.contiguous()
        z_out, a, t = z.new_empty(batch, D), z.new_empty(batch, K), z.new_empty(batch, K)
        lib.planar_forward(batch, K, D, z.data_ptr(), u.data_ptr(), w.data_ptr(), b.data_ptr(),
                           scale.data_ptr(), z_out.data_ptr(), a.data_ptr(), t.data_ptr())
        ctx.save_for_backward(z, u, w, scale, t, wu, w2)
        return z_out, a, one_plus_wu_hat

    @staticmethod
    def backward(ctx, g_out: Tensor, g_a: Tensor, g_one_plus: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if torch.is_grad_enabled():
            raise RuntimeError(_NO_DOUBLE_BACKWARD)
        z, u, w, scale, t, wu, w2 = ctx.saved_tensors
        lib = native.load("planar_chain", _DTYPES[z.dtype])
        batch, K, D = u.shape
        g_out, g_a = g_out.contiguous(), g_a.contiguous()
        g_z, g_u, g_w = torch.empty_like(z), torch.empty_like(u), torch.empty_like(w)
        g_b, g_scale, work = z.new_empty(batch, K), z.new_empty(batch, K), z.new_empty(K, D)
        lib.planar_backward(batch, K, D, z.data_ptr(), u.data_ptr(), w.data_ptr(), scale.data_ptr(),
                            t.data_ptr(), g_out.data_ptr(), g_a.data_ptr(), g_z.data_ptr(), g_u.data_ptr(),
                            g_w.data_ptr(), g_b.data_ptr(), g_scale.data_ptr(), work.data_ptr())
        with torch.enable_grad():
            wu, w2 = wu.detach().requires_grad_(), w2.detach().requires_grad_()
            g_wu, g_w2 = torch.autograd.grad(planar_scale(wu, w2), (wu, w2), (g_scale, g_one_plus))
        g_wu, g_w2 = g_wu.contiguous(), g_w2.contiguous()
        lib.planar_finish(batch * K, D, u.data_ptr(), w.data_ptr(), g_wu.data_ptr(), g_w2.data_ptr(),
                          g_u.data_ptr(), g_w.data_ptr())
        return g_z, g_u, g_w, g_b


_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def kernel_usable(z: Tensor) -> bool:
    """Whether the compiled kernel can run a chain on ``z``: float32 or float64 on a CPU, and the kernel
    built here (:func:`flowbook.kernels.native.status` says why not)."""
    return z.device.type == "cpu" and z.dtype in _DTYPES and native.load("planar_chain", _DTYPES[z.dtype]) is not None


def planar_chain(z: Tensor, u: Tensor, w: Tensor, b: Tensor, compiled: bool | None = None
                 ) -> tuple[Tensor, Tensor]:
    """K planar layers (eq. 10–12): the same arguments and result as :func:`flowbook.flows.planar`
    (raw u, w of shape (K, D) or (batch, K, D); b of shape (K,) or (batch, K)), computed with the
    hand-written backward described in this module's docstring. Returns ``(z_K, log_det)``.

    ``compiled``: None (default) sends per-example parameters in float32 or float64 on a CPU to the
    compiled kernel when one can be built (:func:`flowbook.kernels.native.status`), and everything else to the
    PyTorch loop; False always runs the PyTorch loop; True requires the kernel (and raises if it cannot
    be used, saying why)."""
    check_planar(z, u, w, b, "planar_chain")
    per_example = u.dim() == 3 or w.dim() == 3 or b.dim() == 2
    if compiled and not (per_example and kernel_usable(z)):
        raise RuntimeError("planar_chain(compiled=True): the compiled kernel takes per-example (batch, K, D) "
                           "parameters in float32 or float64 on the CPU; here: "
                           f"{'per-example' if per_example else 'shared'} parameters, {z.dtype} on {z.device}; "
                           f"{native.status('planar_chain', _DTYPES.get(z.dtype, 'float32'))}. "
                           "Pass compiled=None to fall back to the PyTorch loop.")
    if per_example:  # broadcast any shared parameter
        batch, (K, D) = z.shape[0], u.shape[-2:]
        u, w, b = u.expand(batch, K, D), w.expand(batch, K, D), b.expand(batch, K)
        if compiled is not False and kernel_usable(z):
            z_out, a, one_plus_wu_hat = _PlanarChainNative.apply(z, u, w, b)
            return z_out, planar_log_det(a, one_plus_wu_hat)
    z_out, a, one_plus_wu_hat = _PlanarChain.apply(z, u, w, b)
    return z_out, planar_log_det(a.t(), one_plus_wu_hat)
