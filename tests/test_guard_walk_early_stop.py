"""Guard: the sparse random walk's early stop (``tol``) takes exactly the steps it should.

Hand case: two cells joined by one pair of affinity 1/3 (beta 1) plus self-loops.
A = [[1, 1/3], [1/3, 1]], column sums 4/3, so T = [[3/4, 1/4], [1/4, 3/4]]. Starting
from x0 = [1, 0] the difference of the two cells halves every step (1 - 2/4 = 1/2):

    x_k = [1/2 + 2^-(k+1), 1/2 - 2^-(k+1)],   step k changes each cell by 2^-(k+1)

so step 1 changes 1/4, step 2 1/8, step 3 1/16, ... With ``tol`` = 0.2 the walk stops
after step 2 (1/8 <= 0.2 < 1/4) at [0.625, 0.375]; with 0.1 after step 3 at
[0.5625, 0.4375]; without ``tol`` it takes all 2 ** logt steps. The number of steps is
read back both from the result (each k gives a different x_k) and, for the torch backend,
by counting the sparse products actually run.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.propagation import random_walk as rw

LOGT = 4  # 16 steps when nothing stops the walk


def two_cell_transition():
    t = rw.transition_from_affinity(np.array([1 / 3]), 1, 2, radius=2, beta=1.0)
    np.testing.assert_allclose(t.toarray(), [[0.75, 0.25], [0.25, 0.75]], atol=1e-12)
    return t


def after_steps(k: int) -> list[float]:
    return [0.5 + 2.0 ** -(k + 1), 0.5 - 2.0 ** -(k + 1)]


def count_sparse_products(monkeypatch) -> list[int]:
    calls = []
    real_mm = torch.sparse.mm

    def counting_mm(*args, **kwargs):
        calls.append(1)
        return real_mm(*args, **kwargs)

    monkeypatch.setattr(torch.sparse, "mm", counting_mm)
    return calls


@pytest.mark.parametrize("tol, steps", [(0.2, 2), (0.1, 3), (None, 2 ** LOGT)])
def test_torch_walk_takes_exactly_the_steps_tol_allows(monkeypatch, tol, steps):
    t = two_cell_transition()
    calls = count_sparse_products(monkeypatch)
    out = rw.random_walk_sparse(np.array([[1.0, 0.0]]), t, LOGT, tol=tol, backend="torch")
    assert len(calls) == steps
    np.testing.assert_allclose(out, [after_steps(steps)], atol=1e-12)


@pytest.mark.parametrize("tol, steps", [(0.2, 2), (0.1, 3), (None, 2 ** LOGT)])
def test_scipy_walk_takes_exactly_the_steps_tol_allows(tol, steps):
    t = two_cell_transition()
    out = rw.random_walk_sparse(np.array([[1.0, 0.0], [0.0, 1.0]]), t, LOGT, tol=tol, backend="scipy")
    # x_k identifies k: the walk stopped after exactly `steps` steps (second channel mirrored)
    np.testing.assert_allclose(out, [after_steps(steps), after_steps(steps)[::-1]], atol=1e-12)


def test_early_stop_result_differs_from_the_full_walk():
    """The stop is visible in the values: 0.625 after 2 steps vs 0.5 + 2^-17 after 16."""
    t = two_cell_transition()
    early = rw.random_walk_sparse(np.array([[1.0, 0.0]]), t, LOGT, tol=0.2)
    full = rw.random_walk_sparse(np.array([[1.0, 0.0]]), t, LOGT)
    assert early[0, 0] == pytest.approx(0.625, abs=1e-12)
    assert full[0, 0] == pytest.approx(0.5 + 2.0 ** -17, abs=1e-12)


def test_psa_walk_passes_tol_to_the_sparse_walk(monkeypatch):
    """The same case through psa_random_walk (method sparse): tol reaches the step loop."""
    calls = count_sparse_products(monkeypatch)
    out = rw.psa_random_walk(np.array([[[1.0, 0.0]]]), np.array([1 / 3]), beta=1.0, logt=LOGT, alpha=None,
                             radius=2, method="sparse", with_background=False, tol=0.2)
    assert len(calls) == 2
    np.testing.assert_allclose(out, [[after_steps(2)]], atol=1e-12)
