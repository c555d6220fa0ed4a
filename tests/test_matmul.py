"""The transformer's matrix products with a CPU-friendly backward pass (`models.matmul`):
the same values and gradients as plain jnp products, and on XLA:CPU a backward pass whose every
product has its left operand's contracted axis last (the form XLA:CPU gives to YNNPACK)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import update
from rlvr_jax.models import matmul as M


def _rand(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


CASES = {
    "2d": ((24, 16), (16, 12), False),
    "batched": ((3, 24, 16), (3, 16, 12), False),
    "shared_weight": ((3, 24, 16), (16, 12), False),
    "nt": ((24, 16), (12, 16), True),
    "nt_batched": ((2, 3, 24, 16), (2, 3, 12, 16), True),
    "nt_shared_weight": ((3, 24, 16), (12, 16), True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_equal_plain_products(case):
    xs, ws, transpose_w = CASES[case]
    x, w = _rand(0, xs, ws)
    (g,) = _rand(1, (*xs[:-1], ws[-2] if transpose_w else ws[-1]))

    def ours(x, w):
        return M.matmul(x, w, transpose_w)

    def plain(x, w):
        return x @ (jnp.swapaxes(w, -1, -2) if transpose_w else w)

    assert M._use_cpu_products()  # the tests run on CPU: `ours` is the custom product
    y1, vjp1 = jax.vjp(ours, x, w)
    y2, vjp2 = jax.vjp(plain, x, w)
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-6)
    for a, b in zip(vjp1(g), vjp2(g), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_project_contracts_leading_weight_axes():
    x, w = _rand(2, (2, 5, 3, 4), (3, 4, 6))  # [N,T,H,K] @ [H,K,D], as the o projection
    np.testing.assert_allclose(
        M.project(x, w, 2), jnp.einsum("nthk,hkd->ntd", x, w), rtol=1e-5, atol=1e-5
    )
    x, w = _rand(3, (2, 5, 6), (6, 3, 4))  # [N,T,D] @ [D,H,K], as the q projection
    np.testing.assert_allclose(
        M.project(x, w), jnp.einsum("ntd,dhk->nthk", x, w), rtol=1e-5, atol=1e-5
    )


def _eigen_dots(fn, *args) -> list[str]:
    """The matrix products that fn's optimised CPU HLO (with the update's compiler options) leaves
    outside YNNPACK fusions: those are the `dot` ops of its entry computation."""
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=update.compiler_options())
    entry = compiled.as_text().split("\nENTRY ", 1)[1]
    return [line.strip() for line in entry.splitlines() if " dot(" in line]


def test_cpu_backward_contracts_the_minor_axis(monkeypatch):
    """Gradients of an MLP-shaped chain of dense layers and the tied head: with the custom
    products every product of the backward pass runs in YNNPACK; with plain autodiff the weight
    gradients (contracted over the token axis, their left operand's first) do not, so the check
    can fail."""
    x, w1, w2, emb = _rand(4, (64, 32), (32, 48), (48, 32), (100, 32))

    def loss(x, w1, w2, emb):
        h = M.project(jax.nn.silu(M.project(x, w1)), w2)
        return jnp.sum(M.matmul(h, emb, transpose_w=True) ** 2)

    def grad():  # a new function each time, so that no trace is reused
        return jax.grad(lambda *a: loss(*a), argnums=(0, 1, 2, 3))

    args = (x, w1, w2, emb)
    assert _eigen_dots(grad(), *args) == []
    ours = grad()(*args)
    monkeypatch.setattr(M, "_use_cpu_products", lambda: False)
    assert _eigen_dots(grad(), *args) != []
    for a, b in zip(ours, grad()(*args), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
