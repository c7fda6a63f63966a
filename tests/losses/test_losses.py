"""Tests for tralign.losses: hand-computed values, gradients and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from tralign.losses import (
    LOSSES,
    LossOutput,
    PairLogps,
    check_loss_params,
    dpo_loss,
    get_loss,
    ipo_loss,
    kto_loss,
    kto_pair_loss,
    pair_loss,
    sft_loss,
)


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual.detach(), torch.tensor(expected, dtype=actual.dtype))


# ---------------------------------------------------------------------------------------- DPO


def test_dpo_zero_margin_is_log2() -> None:
    out = dpo_loss(t(-5.0, -1.0), t(-7.0, -2.0), t(-5.0, -1.0), t(-7.0, -2.0), beta=0.1)
    close(out.losses, [math.log(2), math.log(2)])


def test_dpo_hand_computed() -> None:
    # Row 0: r_w = -4 - (-5) = 1, r_l = -8 - (-6) = -2, h = 3, beta*h = 0.3
    # Row 1: r_w = -3 - (-1) = -2, r_l = -2 - (-2) = 0, h = -2, beta*h = -0.2
    out = dpo_loss(t(-4.0, -3.0), t(-8.0, -2.0), t(-5.0, -1.0), t(-6.0, -2.0), beta=0.1)
    close(out.losses, [math.log(1 + math.exp(-0.3)), math.log(1 + math.exp(0.2))])


def test_dpo_label_smoothing() -> None:
    args = (t(-4.0), t(-8.0), t(-5.0), t(-6.0))  # h = 3
    beta, eps = 0.5, 0.2
    out = dpo_loss(*args, beta=beta, label_smoothing=eps)
    expected = -(1 - eps) * math.log(sigmoid(1.5)) - eps * math.log(sigmoid(-1.5))
    close(out.losses, [expected])
    # eps = 0.5 makes the loss symmetric in h: it no longer cares which answer was preferred.
    half = dpo_loss(*args, beta=beta, label_smoothing=0.5).losses
    swapped = dpo_loss(t(-8.0), t(-4.0), t(-6.0), t(-5.0), beta=beta, label_smoothing=0.5).losses
    torch.testing.assert_close(half, swapped)
    close(half, [-0.5 * math.log(sigmoid(1.5)) - 0.5 * math.log(sigmoid(-1.5))])
    # Symmetry in general: smoothing eps with labels swapped equals smoothing 1-eps.
    swapped_eps = dpo_loss(t(-8.0), t(-4.0), t(-6.0), t(-5.0), beta=beta, label_smoothing=eps).losses
    torch.testing.assert_close(swapped_eps, dpo_loss(*args, beta=beta, label_smoothing=1 - eps).losses)


def test_dpo_stable_for_large_margins() -> None:
    out = dpo_loss(t(0.0), t(-1e4), t(0.0), t(0.0), beta=1.0)
    assert torch.isfinite(out.losses).all()
    out = dpo_loss(t(-1e4), t(0.0), t(0.0), t(0.0), beta=1.0)
    close(out.losses, [1e4])


def test_dpo_gradient_sign() -> None:
    pc, pr = t(-4.0, grad=True), t(-8.0, grad=True)
    dpo_loss(pc, pr, t(-5.0), t(-6.0), beta=0.1).losses.sum().backward()
    assert pc.grad.item() < 0  # raising the chosen log-prob lowers the loss
    assert pr.grad.item() > 0  # raising the rejected log-prob raises it
    # Analytic: dL/dpc = -beta * sigma(-beta*h) with h = 3.
    assert pc.grad.item() == pytest.approx(-0.1 * sigmoid(-0.3))


def test_dpo_rewards_detached_and_scaled() -> None:
    pc, pr = t(-4.0, -3.0, grad=True), t(-8.0, -2.0, grad=True)
    out = dpo_loss(pc, pr, t(-5.0, -1.0), t(-6.0, -2.0), beta=0.1)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    close(out.chosen_rewards, [0.1, -0.2])
    close(out.rejected_rewards, [-0.2, 0.0])


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="1-D"):
        dpo_loss(t(1.0, 2.0).unsqueeze(-1), t(1.0, 2.0), t(1.0, 2.0), t(1.0, 2.0), beta=0.1)


# ---------------------------------------------------------------------------------------- IPO


def test_ipo_zero_exactly_at_target_margin() -> None:
    beta = 0.25  # target h = 1/(2*0.25) = 2
    out = ipo_loss(t(-3.0), t(-5.0), t(-4.0), t(-4.0), beta=beta)  # h = 1 - (-1) = 2
    close(out.losses, [0.0])
    h = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    ipo_loss(h, t(0.0), t(0.0), t(0.0), beta=beta).losses.sum().backward()
    assert h.grad.item() == 0.0  # stationary point
    for off in (1.9, 2.1):
        assert ipo_loss(t(off), t(0.0), t(0.0), t(0.0), beta=beta).losses.item() > 0


def test_ipo_hand_computed() -> None:
    # h = (-4+5) - (-8+6) = 3; beta = 0.1 -> target 5; loss (3-5)^2 = 4
    out = ipo_loss(t(-4.0), t(-8.0), t(-5.0), t(-6.0), beta=0.1)
    close(out.losses, [4.0])
    close(out.chosen_rewards, [0.1])
    close(out.rejected_rewards, [-0.2])


def test_ipo_length_normalisation() -> None:
    # r_w = (-4+10)/3 = 2, r_l = (-8+6)/4 = -0.5, h = 2.5; beta = 0.5 -> target 1; loss 1.5^2 = 2.25
    out = ipo_loss(
        t(-4.0),
        t(-8.0),
        t(-10.0),
        t(-6.0),
        beta=0.5,
        chosen_lengths=torch.tensor([3]),
        rejected_lengths=torch.tensor([4]),
    )
    close(out.losses, [2.25])
    close(out.chosen_rewards, [1.0])
    close(out.rejected_rewards, [-0.25])


def test_ipo_needs_both_lengths() -> None:
    args = (t(-4.0), t(-8.0), t(-5.0), t(-6.0))
    with pytest.raises(ValueError, match="both"):
        ipo_loss(*args, beta=0.1, chosen_lengths=t(3.0))
    with pytest.raises(ValueError, match="both"):
        ipo_loss(*args, beta=0.1, rejected_lengths=t(3.0))


# ----------------------------------------------------------------------------------- KTO-pair


def test_kto_pair_hand_computed_clamp_active() -> None:
    # r_w = [1, 3], r_l = [-2, -4]: mean(r_l) = -3 -> z_w = 0 (clamped); mean(r_w) = 2 -> z_l = 2.
    beta = 0.5
    out = kto_pair_loss(t(0.0, 2.0), t(-3.0, -5.0), t(-1.0, -1.0), t(-1.0, -1.0), beta=beta)
    # Each pair's loss is the mean of its two terms (the authors' scale).
    expected = [
        ((1 - sigmoid(beta * (r_w - 0.0))) + (1 - sigmoid(beta * (2.0 - r_l)))) / 2
        for r_w, r_l in [(1.0, -2.0), (3.0, -4.0)]
    ]
    close(out.losses, expected)
    close(out.chosen_rewards, [0.5, 1.5])
    close(out.rejected_rewards, [-1.0, -2.0])


def test_kto_pair_hand_computed_clamp_inactive_and_weights() -> None:
    # r_w = [1, -3]: mean = -1 -> z_l = 0 (clamped); r_l = [2, 4]: mean = 3 -> z_w = 3 (not clamped).
    beta, lam_d, lam_u = 0.2, 2.0, 0.5
    out = kto_pair_loss(
        t(1.0, -3.0),
        t(2.0, 4.0),
        t(0.0, 0.0),
        t(0.0, 0.0),
        beta=beta,
        desirable_weight=lam_d,
        undesirable_weight=lam_u,
    )
    expected = [
        (lam_d * (1 - sigmoid(beta * (r_w - 3.0))) + lam_u * (1 - sigmoid(beta * (0.0 - r_l)))) / 2
        for r_w, r_l in [(1.0, 2.0), (-3.0, 4.0)]
    ]
    close(out.losses, expected)


def test_kto_pair_reference_point_is_detached() -> None:
    beta = 0.5
    pc, pr = t(0.0, 2.0, grad=True), t(-3.0, -5.0, grad=True)
    out = kto_pair_loss(pc, pr, t(-1.0, -1.0), t(-4.0, -8.0), beta=beta)
    out.losses.sum().backward()

    # r_w = [1, 3], r_l = [1, 3]; z_w = z_l = 2, both clamps inactive so a gradient through z would
    # show up as cross-row terms. Treating z as a constant:
    # dL_i/dpc_i = -beta/2 * s(1-s) with s = sigma(beta*(r_w_i - z_w)); no cross-row terms.
    # dL_i/dpr_i = +beta/2 * s(1-s) with s = sigma(beta*(z_l - r_l_i)). (The 1/2: L_i is the mean
    # of the pair's two terms.)
    def ds(x: float) -> float:
        return sigmoid(x) * (1 - sigmoid(x))

    expected_pc = [-beta / 2 * ds(beta * (r - 2.0)) for r in (1.0, 3.0)]
    expected_pr = [beta / 2 * ds(beta * (2.0 - r)) for r in (1.0, 3.0)]
    close(pc.grad, expected_pc)
    close(pr.grad, expected_pr)


def test_kto_pair_uses_kl_mean_hook() -> None:
    calls: list[torch.Tensor] = []

    def fake_global_mean(x: torch.Tensor) -> torch.Tensor:
        calls.append(x)
        return torch.tensor(1.0, dtype=x.dtype)  # pretend the global batch has mean log-ratio 1

    beta = 0.5
    args = (t(1.0), t(-1.0), t(0.0), t(0.0))  # r_w = 1, r_l = -1
    out = kto_pair_loss(*args, beta=beta, kl_mean=fake_global_mean)
    assert len(calls) == 2 and all(not c.requires_grad for c in calls)
    # Hook: z_w = z_l = 1 -> (1 - sigma(beta*(1-1))) + (1 - sigma(beta*(1+1)))
    close(out.losses, [((1 - sigmoid(0.0)) + (1 - sigmoid(2 * beta))) / 2])
    # Default batch mean: z_w = max(0, -1) = 0, z_l = 1 -> a different value.
    default = kto_pair_loss(*args, beta=beta).losses
    close(default, [((1 - sigmoid(beta)) + (1 - sigmoid(2 * beta))) / 2])


def authors_kto_pair_batch_loss(
    pc: torch.Tensor,
    pr: torch.Tensor,
    rc: torch.Tensor,
    rr: torch.Tensor,
    beta: float,
    lam_d: float,
    lam_u: float,
) -> torch.Tensor:
    """An independent transcription of the KTO authors' paired loss (HALOs; TRL's former
    ``loss_type="kto_pair"``): concatenate the B desirable and B undesirable terms, each with the
    other half's detached, clamped KL estimate, and average over all 2B of them."""
    chosen_kl = (pc - rc).detach().mean().clamp(min=0)
    rejected_kl = (pr - rr).detach().mean().clamp(min=0)
    terms = torch.cat(
        (
            lam_d * (1 - torch.sigmoid(beta * ((pc - rc) - rejected_kl))),
            lam_u * (1 - torch.sigmoid(beta * (chosen_kl - (pr - rr)))),
        )
    )
    return terms.mean()


@pytest.mark.parametrize("lam_d, lam_u", [(1.0, 1.0), (1.5, 0.7)])
def test_kto_pair_is_on_the_authors_scale(lam_d: float, lam_u: float) -> None:
    # The batch loss the module optimises (the mean of the per-pair losses) and its gradients
    # equal the authors' mean over 2B terms, not twice it.
    gen = torch.Generator().manual_seed(0)
    b, beta = 6, 0.3
    pc, pr, rc, rr = (-5 + 3 * torch.randn(b, generator=gen, dtype=torch.float64) for _ in range(4))
    ours_in = [x.clone().requires_grad_() for x in (pc, pr)]
    theirs_in = [x.clone().requires_grad_() for x in (pc, pr)]
    ours = kto_pair_loss(*ours_in, rc, rr, beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u)
    theirs = authors_kto_pair_batch_loss(*theirs_in, rc, rr, beta, lam_d, lam_u)
    ours.losses.mean().backward()
    theirs.backward()
    torch.testing.assert_close(ours.losses.mean(), theirs.detach())
    for mine, ref in zip(ours_in, theirs_in, strict=True):
        torch.testing.assert_close(mine.grad, ref.grad)


# --------------------------------------------------------------------------------- KTO unpaired


def test_kto_unpaired_hand_computed() -> None:
    # r = [1, -2, 0.5]; KL logratios = [1, 3] -> z = 2 (positive, not clamped)
    beta, lam_d, lam_u = 0.5, 1.0, 1.5
    labels = torch.tensor([True, False, True])
    out = kto_loss(
        t(0.0, -3.0, 0.5),
        t(-1.0, -1.0, 0.0),
        t(1.0, 2.0),
        t(0.0, -1.0),
        labels,
        beta=beta,
        desirable_weight=lam_d,
        undesirable_weight=lam_u,
    )
    close(
        out.losses,
        [
            lam_d * (1 - sigmoid(beta * (1.0 - 2.0))),
            lam_u * (1 - sigmoid(beta * (2.0 - (-2.0)))),
            lam_d * (1 - sigmoid(beta * (0.5 - 2.0))),
        ],
    )
    close(out.chosen_rewards, [0.5, 0.25])
    close(out.rejected_rewards, [-1.0])


def test_kto_unpaired_kl_clamped_and_detached() -> None:
    policy_kl = t(-2.0, -4.0, grad=True)  # KL log-ratios mean -3 -> z = 0
    policy = t(1.0, grad=True)
    out = kto_loss(policy, t(0.0), policy_kl, t(0.0, 0.0), torch.tensor([True]), beta=1.0)
    close(out.losses, [1 - sigmoid(1.0)])
    out.losses.sum().backward()
    assert policy_kl.grad is None  # no path through z
    assert policy.grad.item() == pytest.approx(-sigmoid(1.0) * (1 - sigmoid(1.0)))


# ---------------------------------------------------------------------------------------- SFT


def test_sft_mean_is_token_level_nll() -> None:
    logps, lengths = t(-6.0, -1.0, -9.0), torch.tensor([3, 1, 2])
    out = sft_loss(logps, lengths)
    assert out.chosen_rewards is None and out.rejected_rewards is None
    assert out.losses.shape == (3,)
    assert out.losses.mean().item() == pytest.approx((6.0 + 1.0 + 9.0) / 6.0)
    # Not the mean of per-sequence means ((2 + 1 + 4.5)/3 = 2.5).
    assert out.losses.mean().item() != pytest.approx(2.5)


# ----------------------------------------------------------------------------------- registry


def logps_batch() -> PairLogps:
    return PairLogps(
        policy_chosen=t(-4.0, -3.0),
        policy_rejected=t(-8.0, -2.0),
        ref_chosen=t(-5.0, -1.0),
        ref_rejected=t(-6.0, -2.0),
        chosen_lengths=torch.tensor([2, 4]),
        rejected_lengths=torch.tensor([4, 1]),
    )


def test_registry_names_resolve() -> None:
    assert sorted(LOSSES) == ["dpo", "ipo", "kto", "kto_pair", "sft"]
    for name, spec in LOSSES.items():
        assert get_loss(name) is spec and spec.name == name
    assert get_loss("sft").needs_reference is False
    assert get_loss("kto").paired is False
    assert all(LOSSES[n].paired and LOSSES[n].needs_reference for n in ("dpo", "ipo", "kto_pair"))
    assert get_loss("dpo").params == {"beta", "label_smoothing"}
    assert get_loss("ipo").params == {"beta", "length_normalize"}


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        get_loss("orpo")
    assert str(err.value) == "unknown loss 'orpo'; valid losses: dpo, ipo, kto, kto_pair, sft"
    assert check_loss_params("orpo", {}) == [str(err.value)]


def test_check_loss_params() -> None:
    assert check_loss_params("dpo", {"beta": 0.1, "label_smoothing": 0.1}) == []
    assert check_loss_params("sft", {}) == []
    assert check_loss_params("ipo", {"beta": 0.1, "length_normalize": False}) == []
    problems = check_loss_params("dpo", {"beta": 0.0, "gamma": 1.0})
    assert len(problems) == 2
    assert any("gamma" in p and "beta, label_smoothing" in p for p in problems)
    assert any("beta" in p and "> 0" in p for p in problems)
    assert len(check_loss_params("ipo", {"beta": -1})) == 1
    assert len(check_loss_params("dpo", {"label_smoothing": 0.5})) == 1
    assert len(check_loss_params("dpo", {"label_smoothing": -0.1})) == 1
    assert len(check_loss_params("kto_pair", {"desirable_weight": 0, "undesirable_weight": -1})) == 2
    assert len(check_loss_params("sft", {"beta": 0.1})) == 1
    assert len(check_loss_params("dpo", {"beta": "0.1"})) == 1
    assert len(check_loss_params("ipo", {"length_normalize": "yes"})) == 1


def assert_same(a: LossOutput, b: LossOutput) -> None:
    torch.testing.assert_close(a.losses, b.losses)
    for x, y in ((a.chosen_rewards, b.chosen_rewards), (a.rejected_rewards, b.rejected_rewards)):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y)


def test_pair_loss_matches_direct_calls() -> None:
    lp = logps_batch()
    four = (lp.policy_chosen, lp.policy_rejected, lp.ref_chosen, lp.ref_rejected)
    assert_same(
        pair_loss("dpo", lp, beta=0.1, label_smoothing=0.1), dpo_loss(*four, beta=0.1, label_smoothing=0.1)
    )
    assert_same(
        pair_loss("ipo", lp, beta=0.1),
        ipo_loss(*four, beta=0.1, chosen_lengths=lp.chosen_lengths, rejected_lengths=lp.rejected_lengths),
    )
    assert_same(pair_loss("ipo", lp, beta=0.1, length_normalize=False), ipo_loss(*four, beta=0.1))
    # The two IPO variants really differ on this batch, so the flag is observable.
    assert not torch.allclose(pair_loss("ipo", lp, beta=0.1).losses, ipo_loss(*four, beta=0.1).losses)
    assert_same(
        pair_loss("kto_pair", lp, beta=0.1, desirable_weight=2.0),
        kto_pair_loss(*four, beta=0.1, desirable_weight=2.0),
    )
    assert_same(pair_loss("sft", lp), sft_loss(lp.policy_chosen, lp.chosen_lengths))


def test_pair_loss_forwards_kl_mean_to_kto_pair() -> None:
    calls: list[int] = []

    def hook(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x.mean()

    lp = logps_batch()
    pair_loss("kto_pair", lp, beta=0.1, kl_mean=hook)
    assert len(calls) == 2
    pair_loss("dpo", lp, beta=0.1, kl_mean=hook)  # accepted and ignored
    assert len(calls) == 2


def test_pair_loss_rejects_unknown_params_and_unpaired() -> None:
    lp = logps_batch()
    with pytest.raises(ValueError, match="gamma"):
        pair_loss("dpo", lp, beta=0.1, gamma=1.0)
    with pytest.raises(ValueError, match="beta"):
        pair_loss("sft", lp, beta=0.1)
    with pytest.raises(ValueError, match="not a paired"):
        pair_loss("kto", lp, beta=0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        pair_loss("orpo", lp)
