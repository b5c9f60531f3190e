"""The array backends' primitives that are not one library call: the tree QR used on a GPU."""

import numpy as np
import pytest

from moe_sim.backend import tree_qr_r

torch = pytest.importorskip("torch")


def _stack(rows: int, cols: int, condition: float, rng) -> np.ndarray:
    """Three matrices (rows, cols) with singular values from 1 down to 1 / condition."""
    U = np.linalg.qr(rng.standard_normal((3, rows, cols)))[0]
    V = np.linalg.qr(rng.standard_normal((3, cols, cols)))[0]
    return U * np.geomspace(1.0, 1.0 / condition, cols) @ V


@pytest.mark.parametrize("rows", [13, 64, 65, 200, 4097])
@pytest.mark.parametrize("condition", [1e2, 1e10])
def test_the_tree_factor_is_one_qr_up_to_row_signs(rows, condition):
    """Leaves of 64 rows (one, two and three levels of the tree, with and without padding): |R| agrees with
    LAPACK's to rounding in units of the matrix's norm (1), also where the smallest singular value is 1e-10."""
    a = _stack(rows, 13, condition, np.random.default_rng(rows))
    expected = np.abs(np.linalg.qr(a, mode="r"))
    got = np.abs(tree_qr_r(torch, torch.tensor(a), leaf_rows=64).numpy())
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)


def test_too_wide_for_its_leaves_is_one_qr():
    a = np.random.default_rng(0).standard_normal((2, 300, 40))
    got = tree_qr_r(torch, torch.tensor(a), leaf_rows=64).numpy()
    np.testing.assert_array_equal(got, torch.linalg.qr(torch.tensor(a), mode="r")[1].numpy())
