"""Tests for flowbook.native and the compiled planar chain it loads (flowbook/csrc/planar_chain.c):
the compiled path against the reference flows.planar and the PyTorch path of flowbook.fused, in
float64 to 1e-10, float32 against float64, extreme parameters, and the fallbacks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from flowbook.kernels import fused, native
from flowbook.flows import planar

F64 = torch.float64
HAS_CC = native._compiler() is not None


def _params(batch: int, K: int, D: int, dtype: torch.dtype = F64, scale: float = 1.0, seed: int = 0
            ) -> list[torch.Tensor]:
    """z and per-example u, w, b, with u, w cut from one (batch, ·) tensor as the DLGM's encoder
    head produces them: non-contiguous (batch, K, D) views."""
    gen = torch.Generator().manual_seed(seed)
    raw = scale * torch.randn(batch, K * (2 * D + 1), generator=gen, dtype=dtype)
    u, w, b = raw.split([K * D, K * D, K], -1)
    z = torch.randn(batch, D, generator=gen, dtype=dtype)
    return [z, u.view(batch, K, D), w.view(batch, K, D), b]


def _values_and_grads(fn, args: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out, ld = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    # drawn in float64 and cast: the same numbers whatever the dtype under test
    g_out = torch.randn(out.shape, generator=gen, dtype=F64).to(out.dtype)
    g_ld = torch.randn(ld.shape, generator=gen, dtype=F64).to(ld.dtype)
    grads = torch.autograd.grad((out * g_out).sum() + (ld * g_ld).sum(), leaves, allow_unused=True,
                                materialize_grads=True)  # K = 0: b is unused
    return [out, ld, *grads]


def _pytorch_chain(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return fused.planar_chain(*args, compiled=False)


needs_kernel = pytest.mark.skipif(not HAS_CC, reason="no C compiler here: the PyTorch path is tested instead")


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_builds_and_is_used_where_a_compiler_exists(dtype: str) -> None:
    assert native.load("planar_chain", dtype) is not None, native.status("planar_chain", dtype)
    assert "compiled kernel" in native.status("planar_chain", dtype)
    assert fused.kernel_usable(torch.zeros(1, 1, dtype=getattr(torch, dtype)))


@needs_kernel
@pytest.mark.parametrize("K,D", [(1, 1), (1, 2), (7, 3), (32, 40), (80, 5)])
def test_compiled_chain_matches_reference_and_pytorch_path(K: int, D: int) -> None:
    args = _params(6, K, D)
    ref = _values_and_grads(planar, args)
    for fn in (fused.planar_chain, _pytorch_chain):
        got = _values_and_grads(fn, args)
        for r, g in zip(ref, got):
            assert r.shape == g.shape
            torch.testing.assert_close(g, r, atol=1e-10, rtol=0)


@needs_kernel
@pytest.mark.parametrize("batch,K", [(0, 3), (4, 0), (1, 1)])
def test_compiled_chain_edge_sizes(batch: int, K: int) -> None:
    """An empty batch, no layers (z passes through, log-det 0) and a single point and layer."""
    args = _params(batch, K, 2)
    for r, g in zip(_values_and_grads(planar, args), _values_and_grads(fused.planar_chain, args)):
        assert r.shape == g.shape
        torch.testing.assert_close(g, r, atol=1e-12, rtol=0)


@needs_kernel
def test_compiled_chain_with_shared_parameters_broadcast() -> None:
    """Shared u, w (K, D) with per-example b: the chain broadcasts and the gradients sum over the batch."""
    z, u, w, b = _params(5, 4, 3)
    args = [z, u[0].clone(), w[0].clone(), b]
    ref = _values_and_grads(planar, args)
    for r, g in zip(ref, _values_and_grads(fused.planar_chain, args)):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=0)


@needs_kernel
def test_compiled_chain_gradcheck() -> None:
    args = [a.detach().requires_grad_() for a in _params(3, 4, 3, seed=3)]
    assert torch.autograd.gradcheck(fused.planar_chain, args)


@needs_kernel
def test_compiled_float32_within_5e_4_of_float64() -> None:
    args64 = _params(10, 32, 40, scale=0.3)
    ref = _values_and_grads(fused.planar_chain, args64)
    got = _values_and_grads(fused.planar_chain, [a.float() for a in args64])
    for r, g in zip(ref, got):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), r, atol=5e-4, rtol=5e-4)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_compiled_chain_finite_for_extreme_parameters(dtype: torch.dtype) -> None:
    z, u, w, b = _params(4, 6, 3, dtype=dtype, scale=100.0)
    w = w.clone()
    w[1] = 0.0  # w = 0 for every layer of one example: the constraint's 1/‖w‖² must stay harmless
    args = [z, u, w, b]
    out = _values_and_grads(fused.planar_chain, args)
    for t in out:
        assert torch.isfinite(t).all()
    if dtype == F64:  # and still the reference's numbers
        for r, g in zip(_values_and_grads(planar, args), out):
            torch.testing.assert_close(g, r, atol=1e-8, rtol=1e-10)


def test_compiled_true_says_when_the_kernel_cannot_be_used() -> None:
    z, u, w, b = _params(2, 3, 2)
    with pytest.raises(RuntimeError, match=r"compiled=True.*shared parameters.*compiled=None"):
        fused.planar_chain(z, u[0], w[0], b[0], compiled=True)


@needs_kernel
def test_compiled_chain_refuses_double_backward() -> None:
    z, u, w, b = [a.requires_grad_() for a in _params(2, 2, 2)]
    out, ld = fused.planar_chain(z, u, w, b)
    with pytest.raises(RuntimeError, match=r"not differentiable .* use flowbook.flows.planar"):
        torch.autograd.grad(ld.sum(), z, create_graph=True)


def test_disabled_kernel_falls_back_to_the_same_numbers() -> None:
    """FLOWBOOK_NATIVE=0 (set before import, in a fresh process): PyTorch path, same results."""
    code = ("import torch; from flowbook import flows; from flowbook.kernels import native, fused\n"
            "print(native.status())\n"
            "z = torch.randn(3, 2, dtype=torch.float64); u, w = torch.randn(2, 3, 4, 2, dtype=torch.float64)\n"
            "b = torch.randn(3, 4, dtype=torch.float64)\n"
            "assert not fused.kernel_usable(z)\n"
            "for x, y in zip(fused.planar_chain(z, u, w, b), flows.planar(z, u, w, b)):\n"
            "    torch.testing.assert_close(x, y, atol=1e-12, rtol=0)\n")
    env = {**os.environ, "FLOWBOOK_NATIVE": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "PyTorch fallback, because disabled by FLOWBOOK_NATIVE=0" in done.stdout


def test_failed_build_is_reported_not_raised(tmp_path, monkeypatch) -> None:
    """A compiler that fails: load() returns None and status() shows the command and its error."""
    if shutil.which("false") is None:
        pytest.skip("no `false` program to stand in for a broken compiler")
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("FLOWBOOK_CACHE", str(tmp_path))
    native.load.cache_clear()
    try:
        assert native.load("planar_chain", "float64") is None
        message = native.status("planar_chain", "float64")
        assert "PyTorch fallback, because the build failed" in message and "-DREAL=double" in message
        assert not list(tmp_path.glob("*.so"))  # no half-written library left behind
    finally:
        native.load.cache_clear()


@needs_kernel
def test_kernels_are_cached_per_source_and_precision(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FLOWBOOK_CACHE", str(tmp_path))
    native.load.cache_clear()
    try:
        assert native.load("planar_chain", "float32") is not None
        assert native.load("planar_chain", "float64") is not None
        built = sorted(p.name for p in tmp_path.glob("*.so"))
        assert len(built) == 2 and built[0].startswith("planar_chain_double_")
        native.load.cache_clear()  # a new process: finds the libraries instead of compiling again
        stamp = [p.stat().st_mtime_ns for p in sorted(tmp_path.glob("*.so"))]
        assert native.load("planar_chain", "float32") is not None
        assert [p.stat().st_mtime_ns for p in sorted(tmp_path.glob("*.so"))] == stamp
    finally:
        native.load.cache_clear()


@needs_kernel
def test_a_damaged_cached_library_is_rebuilt(tmp_path) -> None:
    """In fresh processes (a process must never overwrite a library it has loaded): build, damage the
    file, load again."""
    env = {**os.environ, "FLOWBOOK_CACHE": str(tmp_path)}
    code = ("import torch; from flowbook import flows; from flowbook.kernels import native, fused\n"
            "print(native.status('planar_chain', 'float64'))\n"
            "z = torch.randn(3, 2, dtype=torch.float64); u, w = torch.randn(2, 3, 4, 2, dtype=torch.float64)\n"
            "b = torch.randn(3, 4, dtype=torch.float64)\n"
            "for x, y in zip(fused.planar_chain(z, u, w, b, compiled=True), flows.planar(z, u, w, b)):\n"
            "    torch.testing.assert_close(x, y, atol=1e-12, rtol=0)\n")
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,  # noqa: E731
                                 timeout=120)
    first = run()
    assert first.returncode == 0, first.stderr
    (built,) = tmp_path.glob("*.so")
    built.write_bytes(b"not a shared library")
    second = run()
    assert second.returncode == 0, second.stderr
    assert "compiled kernel" in second.stdout
    assert built.read_bytes()[:4] == b"\x7fELF" or built.stat().st_size > 1000  # rebuilt in place
