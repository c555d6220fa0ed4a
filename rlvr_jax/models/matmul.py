"""Matrix products with a CPU-friendly backward pass, used by every dense layer of the model.

XLA:CPU hands a matrix product to YNNPACK only when its left operand is row-major with the
contracted axis last; otherwise Eigen runs it, asynchronously, on threads that YNNPACK's products
are using at the same time (two cores: both slow down). The weight gradient of y = x @ w is
x^T @ g, a product over the token axis, which is x's *first* axis: autodiff's form goes to Eigen.
Here the backward pass transposes x into a buffer of its own (the barrier keeps XLA from folding
the transpose back into the product), so that every product of the update runs in YNNPACK.
Measured on 2 cores, SmolLM2-135M, 8 x 256 tokens: see bench/train_step.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _own_buffer(x: jax.Array) -> jax.Array:
    """x materialised as it is: XLA may not fold a transpose that made it into its consumer."""
    return jax.lax.optimization_barrier(x)


def _t(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., M, A] @ w [..., A, B] (equal leading batch axes, or none on w)."""
    return x @ w


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _sum_leading(dw: jax.Array, ndim: int) -> jax.Array:
    """dw summed over the leading axes beyond ndim: a weight shared by every leading index of x."""
    return dw.sum(tuple(range(dw.ndim - ndim))) if dw.ndim > ndim else dw


def _matmul_bwd(res, g):
    x, w = res
    return g @ _t(w), _sum_leading(_own_buffer(_t(x)) @ g, w.ndim)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def _matmul_nt(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., M, A] @ w [..., B, A]^T (attention scores; the tied vocabulary projection), with
    leading axes as `_matmul`'s."""
    return x @ _t(w)


def _matmul_nt_fwd(x, w):
    return x @ _t(w), (x, w)


def _matmul_nt_bwd(res, g):
    x, w = res
    # dw = g^T x, computed as (x^T g)^T: transposing x [M, A] is cheap, transposing g [M, B]
    # (the [tokens, vocab] logit gradient for the head) is not.
    return g @ w, _t(_own_buffer(_sum_leading(_own_buffer(_t(x)) @ g, w.ndim)))


_matmul_nt.defvjp(_matmul_nt_fwd, _matmul_nt_bwd)


def _use_cpu_products() -> bool:
    return jax.default_backend() == "cpu"


def matmul(x: jax.Array, w: jax.Array, transpose_w: bool = False) -> jax.Array:
    """x [..., M, A] @ w [..., A, B] (or w [..., B, A]^T with transpose_w): `_matmul` on XLA:CPU,
    where its gradients run faster; elsewhere plain jnp.matmul, which accelerators' libraries
    transpose for free. The forward product is the same either way."""
    if not _use_cpu_products():
        return x @ (_t(w) if transpose_w else w)
    return _matmul_nt(x, w) if transpose_w else _matmul(x, w)


def project(x: jax.Array, w: jax.Array, n_in: int = 1) -> jax.Array:
    """A dense layer: contract the last n_in axes of x with the first n_in axes of w."""
    lead, a = x.shape[: x.ndim - n_in], math.prod(w.shape[:n_in])
    y = matmul(x.reshape(-1, a), w.reshape(a, -1))
    return y.reshape(*lead, *w.shape[n_in:])
