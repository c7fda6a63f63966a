"""The reference rule on LoRA factors (tralign/lora/update.py): identities against the dense rule
ΔW_ref ← α·ΔW + (1 − α)·ΔW_ref, with ΔW = s·B·A."""

from __future__ import annotations

import pytest
import torch

from tralign.lora.update import compress, delta, ema_factors, hard_factors, svd_factors


def _factors(out: int, inn: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, r, generator=g, dtype=torch.float64), torch.randn(
        r, inn, generator=g, dtype=torch.float64
    )


def test_hard_update_copies_the_adapter_exactly() -> None:
    B, A = _factors(12, 10, 4, 0)
    B_ref, A_ref = _factors(12, 10, 4, 1)
    hard_factors(B, A, B_ref, A_ref)
    assert torch.equal(B_ref, B) and torch.equal(A_ref, A)


def test_compress_keeps_the_product_when_the_rank_fits_and_is_eckart_young_otherwise() -> None:
    B, A = _factors(12, 10, 6, 2)
    B2, A2, dropped = compress(B, A, 6)
    torch.testing.assert_close(B2 @ A2, (B @ A).float(), rtol=1e-5, atol=1e-5)
    assert dropped.norm() < 1e-4
    B3, A3, dropped3 = compress(B, A, 3)
    s = torch.linalg.svdvals((B @ A).float())
    # The error is the dropped singular values, and they are the smallest ones of B·A.
    torch.testing.assert_close(
        torch.linalg.matrix_norm(B3 @ A3 - (B @ A).float()), s[3:].norm(), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(dropped3[:3], s[3:6], rtol=1e-4, atol=1e-5)
    assert B3.shape == (12, 3) and A3.shape == (3, 10)


@pytest.mark.parametrize("scales", [(1.0, 1.0), (2.0, 0.5)])
def test_svd_soft_update_is_the_dense_rule_at_full_rank(scales: tuple[float, float]) -> None:
    """ref_rank = min(out, in): every soft update matches the dense rule, 20 updates in a row."""
    s, s_ref = scales
    out, inn, r, alpha = 8, 6, 2, 0.3
    B_ref, A_ref = torch.zeros(out, inn), torch.zeros(inn, inn)  # rank 6 = min(out, in), ΔW_ref = 0
    dense = torch.zeros(out, inn, dtype=torch.float64)
    for step in range(20):
        B, A = _factors(out, inn, r, 10 + step)  # the policy moves between updates
        dense = alpha * s * (B @ A) + (1 - alpha) * dense
        B_ref, A_ref, dropped = svd_factors(B.float(), A.float(), s, B_ref, A_ref, s_ref, alpha)
        assert dropped.norm() < 1e-5 * dense.norm()
    err = (delta(B_ref, A_ref, s_ref).double() - dense).norm() / dense.norm()
    assert err < 1e-5


def test_svd_soft_update_error_is_the_dropped_singular_values() -> None:
    """Compressed (ref_rank < rank of the new ΔW_ref): one update's Frobenius error is what it reports."""
    out, inn, r, alpha, s = 16, 12, 3, 0.4, 0.5
    B, A = _factors(out, inn, r, 3)
    B_ref, A_ref = _factors(out, inn, r, 4)
    dense = alpha * s * (B @ A) + (1 - alpha) * s * (B_ref @ A_ref)
    B_new, A_new, dropped = svd_factors(B.float(), A.float(), s, B_ref.float(), A_ref.float(), s, alpha)
    err = (delta(B_new, A_new, s).double() - dense).norm()
    assert err > 1e-3  # rank 6 squeezed into 3: not exact
    torch.testing.assert_close(err, dropped.double().norm(), rtol=1e-4, atol=1e-6)


def test_svd_at_alpha_one_is_the_policy_delta() -> None:
    B, A = _factors(10, 9, 3, 5)
    B_ref, A_ref = _factors(10, 9, 3, 6)
    B_new, A_new, _ = svd_factors(B.float(), A.float(), 2.0, B_ref.float(), A_ref.float(), 2.0, 1.0)
    torch.testing.assert_close(delta(B_new, A_new, 2.0), delta(B, A, 2.0), rtol=1e-5, atol=1e-5)


def test_factor_ema_is_not_the_weight_space_rule() -> None:
    """Why ref_mode=factors is named an approximation: B'A' ≠ α·BA + (1 − α)·B_ref·A_ref."""
    B, A = _factors(10, 9, 3, 7)
    B_ref, A_ref = _factors(10, 9, 3, 8)
    alpha = 0.5
    B_new, A_new = ema_factors(B, A, B_ref, A_ref, alpha)
    dense = alpha * B @ A + (1 - alpha) * B_ref @ A_ref
    assert (B_new @ A_new - dense).norm() / dense.norm() > 0.1
    B1, A1 = ema_factors(B, A, B_ref, A_ref, 1.0)
    assert torch.equal(B1, B) and torch.equal(A1, A)
