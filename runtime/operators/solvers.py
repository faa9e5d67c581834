"""The numerical solvers behind the proximal steps (`Operator.prox`), per sample and in float64.

    block_offset   the exact per-block offset of a clipped downsampling prox (piecewise linear root)
    cg_prox        linear A: x = z + d, d by CGLS (lam = 0: the least-norm correction, A^+)
    box_refine     linear A: FISTA into [0, 1] from CG's clipped solution, where the box binds
    descent_prox   any A: backtracking gradient descent through the operator's VJP (the fallback)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ckm_edge.runtime.operators.base import Operator


def block_offset(z: np.ndarray, y: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Per row of z (n, k): the mu solving g(mu) = lam mu + mean(clip(z + mu, 0, 1)) - y = 0.
    g is increasing and piecewise linear with kinks at -z_i and 1 - z_i: evaluate it there, take
    the segment where it crosses 0 and interpolate (beyond the kinks g has slope lam; with lam = 0
    and y outside [0, 1] the nearest kink, all cells at a bound, is the best fit)."""
    kinks = np.sort(np.concatenate([-z, 1.0 - z], axis=1), axis=1)  # (n, 2k)
    g = lam * kinks + np.clip(z[:, None, :] + kinks[:, :, None], 0.0, 1.0).mean(axis=2) - y  # (n, 2k)
    above = g >= 0
    k = np.argmax(above, axis=1)  # first kink where g >= 0 (0 if none: handled below)
    rows = np.arange(len(z))
    k0 = np.maximum(k - 1, 0)
    m0, m1, g0, g1 = kinks[rows, k0], kinks[rows, k], g[rows, k0], g[rows, k]
    inside = m0 - g0 * (m1 - m0) / np.where(g1 > g0, g1 - g0, 1.0)
    lam1 = lam[:, 0]
    first = np.where(lam1 > 0, kinks[:, 0] - g[:, 0] / np.where(lam1 > 0, lam1, 1.0), kinks[:, 0])
    last = np.where(lam1 > 0, kinks[:, -1] - g[:, -1] / np.where(lam1 > 0, lam1, 1.0), kinks[:, -1])
    mu = np.where(~above.any(axis=1), last, np.where(above[:, 0], first, inside))
    return mu[:, None]


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample inner product (B, 1, 1, 1), in float64."""
    return (a.astype(np.float64) * b).reshape(len(a), -1).sum(axis=1).reshape(-1, 1, 1, 1)


def cg_prox(op: Operator, z: np.ndarray, y: np.ndarray, lam: float, tol: float = 1e-6, iters: int = 500) -> np.ndarray:
    """x = z + d, d solving min ||r - A d||^2 + lam ||d||^2 with r = y - A z, by CGLS per sample.

    From d = 0, CGLS stays in the row space of A, so for lam = 0 it converges to the least-norm
    solution: x = z + A^+ (y - A z). Stops when every sample's normal-equation residual is below
    tol times its start (float64 throughout)."""
    z64 = z.astype(np.float64)
    r = np.asarray(y, np.float64) - op.forward(z64)
    d = np.zeros_like(z64)
    s = op.vjp(z64, r)  # A^T r - lam d, with d = 0
    p, gamma = s.copy(), dot(s, s)
    stop = tol**2 * np.maximum(gamma, 1e-300)
    for _ in range(iters):
        if np.all(gamma <= stop):
            break
        q = op.forward(p)
        alpha = gamma / np.maximum(dot(q, q) + lam * dot(p, p), 1e-300)
        d += alpha * p
        r -= alpha * q
        s = op.vjp(z64, r) - lam * d
        gamma_new = dot(s, s)
        p = s + gamma_new / np.maximum(gamma, 1e-300) * p
        gamma = gamma_new
    return (z64 + d).astype(z.dtype)


def box_refine(op: Operator, z: np.ndarray, y: np.ndarray, lam, x: np.ndarray, iters: int = 500) -> np.ndarray:
    """Bring an unconstrained minimiser x into [0, 1]: accelerated projected gradient (FISTA) on
    ||y - A x||^2 + lam ||x - z||^2 from clip(x), for a linear A (||A||^2 by power iteration)."""
    if x.min() >= 0.0 and x.max() <= 1.0:
        return x
    z64, y64 = z.astype(np.float64), np.asarray(y, np.float64)
    v = np.random.default_rng(0).standard_normal(z.shape)  # fixed: the result must not depend on a global seed
    for _ in range(30):
        v = op.vjp(z64, op.forward(v))
        v /= np.maximum(np.sqrt(dot(v, v)), 1e-300)
    u = op.vjp(z64, op.forward(v))
    norm2 = np.sqrt(dot(u, u))  # ||A^T A v|| with ||v|| = 1: the largest eigenvalue of A^T A
    step = 1.0 / (2.0 * (norm2 * 1.01 + lam))
    x = np.clip(x.astype(np.float64), 0.0, 1.0)
    w, t = x, 1.0
    for _ in range(iters):
        g = -2.0 * op.vjp(z64, y64 - op.forward(w)) + 2.0 * lam * (w - z64)
        x_new = np.clip(w - step * g, 0.0, 1.0)
        t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        w = x_new + ((t - 1.0) / t_new) * (x_new - x)
        done = np.abs(x_new - x).max() < 1e-10
        x, t = x_new, t_new
        if done:
            break
    return x.astype(z.dtype)


def descent_prox(op: Operator, z: np.ndarray, y: np.ndarray, lam: float, iters: int = 50) -> np.ndarray:
    """The fallback data step: gradient descent on f(x) = ||y - A(x)||^2 + lam ||x - z||^2 from z,
    through the operator's VJP only, with a per-sample backtracking step (halved until f falls).
    With lam = 0 the few iterations from z are what keeps x near z."""
    x = z.astype(np.float64)

    def f(v):
        r = np.asarray(y, np.float64) - op.forward(v)
        return dot(r, r) + lam * dot(v - z, v - z), r

    fx, r = f(x)
    step = np.full_like(fx, 0.5)
    for _ in range(iters):
        g = -2.0 * op.vjp(x, r) + 2.0 * lam * (x - z)
        for _ in range(30):  # backtracking, per sample
            cand = x - step * g
            fc, rc = f(cand)
            ok = fc <= fx - 0.5 * step * dot(g, g)
            if ok.all():
                break
            step = np.where(ok, step, step / 2)
        ok = fc <= fx
        x, fx, r = np.where(ok, cand, x), np.where(ok, fc, fx), np.where(ok, rc, r)
        step = np.minimum(step * 2, 8.0)
    return x.astype(z.dtype)
