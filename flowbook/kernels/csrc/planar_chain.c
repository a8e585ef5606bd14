/* The amortized planar chain (Rezende & Mohamed 2015, eq. 10-12 and Appendix A) in plain C.

   flowbook.kernels.native compiles this file twice, with -DREAL=float and -DREAL=double, and calls it through
   ctypes from flowbook.kernels.fused. It computes exactly what flowbook.flows.planar computes (the tests compare
   the two to 1e-10 in float64); what it saves is the per-operation overhead of a tensor library, which
   is nearly all of the cost of a long chain of small layers on a CPU.

   Layout: every array is C-contiguous; per-example parameters are (B, K, D), per-layer scalars (B, K),
   points (B, D). One example's K layers are adjacent in memory, so the loops run example by example
   and a whole chain (K*D numbers) stays in the L1/L2 cache.

   The constraint of Appendix A, u_hat = u + s*w with s a function of (w.u, |w|^2), is split: this file
   computes the dot products and applies s, while s itself and its derivative come from the Python
   reference (flowbook.flowmath.planar_scale), so the constraint's definition lives in one place. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double"
#endif
typedef REAL real;

/* tanh of the matching precision: a float chain must not silently run in double */
#define TANH(x) (sizeof(real) == sizeof(float) ? (real)tanhf((float)(x)) : (real)tanh((double)(x)))

/* wu[p] = w_p . u_p and w2[p] = |w_p|^2 for p = 0..n-1 (n = B*K rows of length D) */
void planar_dots(int64_t n, int64_t D, const real *u, const real *w, real *wu, real *w2) {
    for (int64_t p = 0; p < n; p++) {
        const real *up = u + p * D, *wp = w + p * D;
        real s_wu = 0, s_w2 = 0;
#pragma omp simd reduction(+ : s_wu, s_w2)
        for (int64_t d = 0; d < D; d++) {
            s_wu += wp[d] * up[d];
            s_w2 += wp[d] * wp[d];
        }
        wu[p] = s_wu;
        w2[p] = s_w2;
    }
}

/* Forward, eq. 10: z_k = z_{k-1} + u_hat_k * tanh(a_k), a_k = w_k . z_{k-1} + b_k.
   Writes z_K (B, D), the pre-activations a (B, K) and t = tanh(a) (B, K); the intermediate z_k are
   not kept (the backward pass rebuilds them from t, which costs one multiply-add per number). */
void planar_forward(int64_t B, int64_t K, int64_t D, const real *z0, const real *u, const real *w,
                    const real *b, const real *scale, real *zK, real *a, real *t) {
    for (int64_t i = 0; i < B; i++) {
        real *z = zK + i * D;
        memcpy(z, z0 + i * D, (size_t)D * sizeof(real));
        for (int64_t k = 0; k < K; k++) {
            const int64_t p = i * K + k;
            const real *uk = u + p * D, *wk = w + p * D;
            const real s = scale[p];
            real dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; d++) dot += wk[d] * z[d];
            const real ak = dot + b[p], tk = TANH(ak);
            a[p] = ak;
            t[p] = tk;
#pragma omp simd
            for (int64_t d = 0; d < D; d++) z[d] += (uk[d] + s * wk[d]) * tk;
        }
    }
}

/* Backward: the adjoint of eq. 10 walked from k = K down to 1, for one example at a time.
   Inputs: the forward's t, the incoming gradients g_zK = dL/dz_K (B, D) and g_a = dL/da (B, K) (the
   log-det's gradient enters through a). With g = dL/dz_k:
     g_a_k   = g_a[k] + <g, u_hat_k> (1 - t_k^2)        dL/da_k
     dL/dz_{k-1} = g + g_a_k w_k
     dL/du_hat_k = g t_k,   dL/dw_k (direct) = g_a_k z_{k-1},   dL/db_k = g_a_k
   and, for the constraint u_hat = u + s w: dL/ds_k = <dL/du_hat_k, w_k>, dL/du gets dL/du_hat, and
   dL/dw gets s dL/du_hat. The terms through (w.u, |w|^2) are added by planar_finish.
   work: K*D scratch numbers, reused for every example. */
void planar_backward(int64_t B, int64_t K, int64_t D, const real *z0, const real *u, const real *w,
                     const real *scale, const real *t, const real *g_zK, const real *g_a, real *g_z0,
                     real *g_u, real *g_w, real *g_b, real *g_scale, real *work) {
    for (int64_t i = 0; i < B; i++) {
        /* rebuild z_0 .. z_{K-1} of this example: work[k*D ..] = z_k (nothing to rebuild when K = 0) */
        if (K > 0) memcpy(work, z0 + i * D, (size_t)D * sizeof(real));
        for (int64_t k = 0; k + 1 < K; k++) {
            const int64_t p = i * K + k;
            const real *uk = u + p * D, *wk = w + p * D, *zk = work + k * D;
            real *zn = work + (k + 1) * D;
            const real s = scale[p], tk = t[p];
#pragma omp simd
            for (int64_t d = 0; d < D; d++) zn[d] = zk[d] + (uk[d] + s * wk[d]) * tk;
        }
        real *g = g_z0 + i * D; /* the running gradient, dL/dz_k, ends as dL/dz_0 */
        memcpy(g, g_zK + i * D, (size_t)D * sizeof(real));
        for (int64_t k = K - 1; k >= 0; k--) {
            const int64_t p = i * K + k;
            const real *uk = u + p * D, *wk = w + p * D, *zp = work + k * D;
            real *gu = g_u + p * D, *gw = g_w + p * D;
            const real s = scale[p], tk = t[p];
            real g_uhat = 0, g_wdot = 0;
#pragma omp simd reduction(+ : g_uhat, g_wdot)
            for (int64_t d = 0; d < D; d++) {
                g_uhat += g[d] * (uk[d] + s * wk[d]);
                g_wdot += g[d] * wk[d];
            }
            const real ga = g_a[p] + g_uhat * (1 - tk * tk);
            g_b[p] = ga;
            g_scale[p] = g_wdot * tk;
#pragma omp simd
            for (int64_t d = 0; d < D; d++) {
                const real gd = g[d] * tk; /* dL/du_hat_k */
                gu[d] = gd;
                gw[d] = ga * zp[d] + s * gd;
                g[d] += ga * wk[d];
            }
        }
    }
}

/* The constraint's remaining terms: with g_wu = dL/d(w.u) and g_w2 = dL/d|w|^2 (from the Python
   reference's scalar map), dL/du += g_wu w and dL/dw += g_wu u + 2 g_w2 w. */
void planar_finish(int64_t n, int64_t D, const real *u, const real *w, const real *g_wu,
                   const real *g_w2, real *g_u, real *g_w) {
    for (int64_t p = 0; p < n; p++) {
        const real *up = u + p * D, *wp = w + p * D;
        real *gu = g_u + p * D, *gw = g_w + p * D;
        const real c_wu = g_wu[p], c_w2 = 2 * g_w2[p];
#pragma omp simd
        for (int64_t d = 0; d < D; d++) {
            gu[d] += c_wu * wp[d];
            gw[d] += c_wu * up[d] + c_w2 * wp[d];
        }
    }
}
