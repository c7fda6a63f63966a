"""Tests for the moving reference (tralign.reference) and its wiring into the training module.

The rule under test (PAPER.md, "The update rules"): every τ optimizer steps,
θ_ref ← α·θ + (1 − α)·θ_ref, in place, never touching the policy.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers.models import tiny_neox
from torch import nn

import tralign.module as module_mod
import tralign.reference as reference_mod
from tralign.reference import (
    PRESETS,
    ReferenceSchedule,
    hard_update_,
    schedule_problems,
    soft_update_,
    update_reference_,
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add contention (a Trainer run goes from ~3 s to ~0.4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(seed: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)).to(dtype)


def _randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter (LayerNorm's ones/zeros included) distinct random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return model


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _ptrs(model: nn.Module) -> dict[str, int]:
    return {n: p.data_ptr() for n, p in model.named_parameters()}


def _assert_params_equal(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    assert params.keys() == expected.keys()
    for n, p in params.items():
        assert p.dtype == expected[n].dtype, n
        assert torch.equal(p.detach(), expected[n]), n


def _pair(kind: str, seed_ref: int = 1, seed_pol: int = 2) -> tuple[nn.Module, nn.Module]:
    if kind == "mlp":
        return _randomize_(_mlp(seed_ref), seed_ref), _randomize_(_mlp(seed_pol), seed_pol)
    return tiny_neox(seed_ref), tiny_neox(seed_pol)


KINDS = ["mlp", "neox"]


# --------------------------------------------------------------------------------------------
# 1. identities of the update
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_alpha_zero_leaves_reference_bitwise_unchanged(kind):
    ref, pol = _pair(kind)
    before, pol_before, ptrs = _snapshot(ref), _snapshot(pol), _ptrs(ref)
    soft_update_(ref, pol, 0.0)
    update_reference_(ref, pol, 0.0)
    _assert_params_equal(ref, before)
    _assert_params_equal(pol, pol_before)
    assert _ptrs(ref) == ptrs


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fn", ["soft", "hard", "dispatch"])
def test_alpha_one_and_hard_update_are_a_bitwise_copy_in_place(kind, fn):
    ref, pol = _pair(kind)
    pol_before, ptrs = _snapshot(pol), _ptrs(ref)
    ref_params_before = [id(p) for p in ref.parameters()]
    # The two models really differ to start with, so a copy is observable.
    assert any(not torch.equal(a, b) for a, b in zip(ref.parameters(), pol.parameters(), strict=True))
    if fn == "soft":
        soft_update_(ref, pol, 1.0)
    elif fn == "hard":
        hard_update_(ref, pol)
    else:
        update_reference_(ref, pol, 1.0)
    _assert_params_equal(ref, pol_before)
    _assert_params_equal(pol, pol_before)  # policy untouched
    assert _ptrs(ref) == ptrs  # same storage: updated in place
    assert [id(p) for p in ref.parameters()] == ref_params_before
    # Still independent storage: the copy does not alias the policy.
    assert not set(_ptrs(ref).values()) & set(_ptrs(pol).values())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [0.1, 0.6, 0.9])
@pytest.mark.parametrize("via_dispatch", [False, True])
def test_one_soft_step_matches_formula_per_tensor(kind, alpha, via_dispatch):
    ref, pol = _pair(kind)
    ref0, pol0, ptrs = _snapshot(ref), _snapshot(pol), _ptrs(ref)
    (update_reference_ if via_dispatch else soft_update_)(ref, pol, alpha)
    for n, r in ref.named_parameters():
        expected = alpha * pol0[n] + (1.0 - alpha) * ref0[n]
        torch.testing.assert_close(r.detach(), expected, rtol=1e-5, atol=1e-6, msg=n)
        # Not a no-op and not a copy (the tensors differ beforehand).
        if not torch.equal(ref0[n], pol0[n]):
            assert not torch.equal(r.detach(), ref0[n]), n
            assert not torch.equal(r.detach(), pol0[n]), n
    _assert_params_equal(pol, pol0)
    assert _ptrs(ref) == ptrs


@pytest.mark.parametrize("alpha", [0.25, 0.6])
def test_two_soft_steps_match_closed_form_with_moving_policy(alpha):
    ref = _randomize_(_mlp(0, torch.float64), 10)
    pol = _randomize_(_mlp(0, torch.float64), 11)
    ref0, p1 = _snapshot(ref), _snapshot(pol)
    soft_update_(ref, pol, alpha)
    _randomize_(pol, 12)  # the policy moves between the two updates
    p2 = _snapshot(pol)
    soft_update_(ref, pol, alpha)
    for n, r in ref.named_parameters():
        expected = (1 - alpha) ** 2 * ref0[n] + alpha * (1 - alpha) * p1[n] + alpha * p2[n]
        torch.testing.assert_close(r.detach(), expected, rtol=1e-12, atol=1e-12, msg=n)
    _assert_params_equal(pol, p2)


def test_update_reference_dispatches(monkeypatch):
    calls: list[tuple] = []
    real_soft, real_hard = reference_mod.soft_update_, reference_mod.hard_update_

    def soft(ref, policy, alpha):
        calls.append(("soft", alpha))
        real_soft(ref, policy, alpha)

    def hard(ref, policy):
        calls.append(("hard",))
        real_hard(ref, policy)

    monkeypatch.setattr(reference_mod, "soft_update_", soft)
    monkeypatch.setattr(reference_mod, "hard_update_", hard)
    ref, pol = _pair("mlp")
    update_reference_(ref, pol, 1.0)
    update_reference_(ref, pol, 0.3)
    update_reference_(ref, pol, 0.0)
    assert calls == [("hard",), ("soft", 0.3), ("soft", 0.0)]


def test_reference_buffers_and_policy_grads_untouched():
    ref, pol = _pair("neox")
    for p in pol.parameters():
        p.grad = torch.ones_like(p)
    grads = {n: p.grad.clone() for n, p in pol.named_parameters()}
    buffers = {n: b.clone() for n, b in ref.named_buffers()}
    soft_update_(ref, pol, 0.5)
    hard_update_(ref, pol)
    for n, p in pol.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    for n, b in ref.named_buffers():
        assert torch.equal(b, buffers[n]), n
    # The update runs without autograd: nothing in the reference gets a graph.
    assert all(p.grad_fn is None for p in ref.parameters())


# --------------------------------------------------------------------------------------------
# 2. mixed dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 0.6])
def test_bf16_reference_fp32_policy_soft_update(alpha):
    ref = _randomize_(_mlp(0, torch.bfloat16), 20)
    pol = _randomize_(_mlp(0, torch.float32), 21)
    ref0, pol0, ptrs = _snapshot(ref), _snapshot(pol), _ptrs(ref)
    soft_update_(ref, pol, alpha)
    for n, r in ref.named_parameters():
        assert r.dtype == torch.bfloat16, n
        expected = alpha * pol0[n] + (1 - alpha) * ref0[n].float()
        torch.testing.assert_close(r.detach().float(), expected, rtol=2e-2, atol=2e-2, msg=n)
        # The change is far larger than bf16 rounding: a skipped update would fail above.
        assert (expected - ref0[n].float()).abs().max() > 0.1, n
    _assert_params_equal(pol, pol0)
    assert _ptrs(ref) == ptrs


def test_mixed_dtype_batch_updates_both_groups():
    """Some tensors share the policy's dtype, some do not: both groups must move."""
    ref = _randomize_(_mlp(0), 30)
    ref[2].to(torch.bfloat16)  # last Linear in bf16, the rest fp32
    pol = _randomize_(_mlp(0), 31)
    ref0, pol0 = _snapshot(ref), _snapshot(pol)
    assert {p.dtype for p in ref.parameters()} == {torch.float32, torch.bfloat16}
    soft_update_(ref, pol, 0.5)
    for n, r in ref.named_parameters():
        expected = 0.5 * pol0[n] + 0.5 * ref0[n].float()
        tol = 2e-2 if r.dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(r.detach().float(), expected, rtol=tol, atol=tol, msg=n)
    hard_update_(ref, pol)
    for n, r in ref.named_parameters():
        assert torch.equal(r.detach(), pol0[n].to(r.dtype)), n


# --------------------------------------------------------------------------------------------
# 3. errors
# --------------------------------------------------------------------------------------------


def _all_updates():
    return [
        lambda r, p: soft_update_(r, p, 0.5),
        lambda r, p: hard_update_(r, p),
        lambda r, p: update_reference_(r, p, 1.0),
        lambda r, p: update_reference_(r, p, 0.5),
    ]


@pytest.mark.parametrize("update", _all_updates())
def test_shape_mismatch_raises_naming_parameter_and_changes_nothing(update):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    pol = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 5))
    before = _snapshot(ref)
    with pytest.raises(ValueError, match=r"2\.weight"):
        update(ref, pol)
    # Validation precedes any write: the earlier, matching tensors were not updated either.
    _assert_params_equal(ref, before)


@pytest.mark.parametrize("update", _all_updates())
def test_parameter_count_mismatch_raises(update):
    ref = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    pol = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    before = _snapshot(ref)
    with pytest.raises(ValueError, match=r"6 parameters, policy 4"):
        update(ref, pol)
    _assert_params_equal(ref, before)


def test_name_mismatch_with_equal_shapes_raises():
    ref = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    pol = nn.Sequential(nn.Linear(4, 4), nn.Identity(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"1\.weight.*2\.weight"):
        hard_update_(ref, pol)


def test_neox_architecture_mismatch_raises():
    ref = tiny_neox()
    pol = tiny_neox(intermediate_size=48)
    with pytest.raises(ValueError, match=r"gpt_neox\.layers\.0\.mlp"):
        soft_update_(ref, pol, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.0001, 1.5, 2.0, math.nan, math.inf])
def test_alpha_out_of_range_raises(alpha):
    ref, pol = _pair("mlp")
    before = _snapshot(ref)
    with pytest.raises(ValueError, match="alpha"):
        soft_update_(ref, pol, alpha)
    with pytest.raises(ValueError, match="alpha"):
        update_reference_(ref, pol, alpha)
    _assert_params_equal(ref, before)


# --------------------------------------------------------------------------------------------
# 4. ReferenceSchedule
# --------------------------------------------------------------------------------------------


def test_presets():
    assert PRESETS == {
        "none": {"alpha": 0.0, "tau": 1},
        "soft": {"alpha": 0.6, "tau": 1},
        "hard": {"alpha": 1.0, "tau": 512},
    }
    for mode, values in PRESETS.items():
        sched = ReferenceSchedule(mode=mode, **values)
        assert sched.active == (mode != "none")
        assert schedule_problems(mode, values["alpha"], values["tau"]) == []
    default = ReferenceSchedule()
    assert (default.mode, default.alpha, default.tau, default.active) == ("none", 0.0, 1, False)


@pytest.mark.parametrize("tau", [1, 2, 3, 512])
def test_is_update_step_every_tau_never_at_zero(tau):
    sched = ReferenceSchedule(mode="hard", alpha=1.0, tau=tau)
    assert not sched.is_update_step(0)
    steps = range(0, 5 * tau)
    updates = [s for s in steps if sched.is_update_step(s)]
    assert updates == [tau, 2 * tau, 3 * tau, 4 * tau]
    done = 0
    for n in steps:
        done += sched.is_update_step(n)
        assert done == n // tau  # updates made after n optimizer steps


def test_soft_schedule_updates_every_step():
    sched = ReferenceSchedule(mode="soft", alpha=0.6, tau=1)
    assert [s for s in range(6) if sched.is_update_step(s)] == [1, 2, 3, 4, 5]
    assert sum(sched.is_update_step(s) for s in range(6)) == 5


def test_hybrid_schedule():
    sched = ReferenceSchedule(mode="soft", alpha=0.6, tau=512)
    assert sched.active
    assert not sched.is_update_step(511)
    assert sched.is_update_step(512)
    assert [s for s in range(1101) if sched.is_update_step(s)] == [512, 1024]


@pytest.mark.parametrize(
    "mode,alpha,tau", [("none", 0.0, 1), ("none", 0.6, 1), ("none", 1.0, 2), ("soft", 0.0, 1), ("hard", 0, 4)]
)
def test_inactive_schedules_never_update(mode, alpha, tau):
    sched = ReferenceSchedule(mode=mode, alpha=alpha, tau=tau)
    assert not sched.active
    assert not any(sched.is_update_step(s) for s in range(20))


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"mode": "soft", "alpha": 1.5, "tau": 1}, "alpha"),
        ({"mode": "soft", "alpha": -0.1, "tau": 1}, "alpha"),
        ({"mode": "soft", "alpha": math.nan, "tau": 1}, "alpha"),
        ({"mode": "soft", "alpha": True, "tau": 1}, "alpha"),
        ({"mode": "soft", "alpha": "0.5", "tau": 1}, "alpha"),
        ({"mode": "hard", "alpha": 1.0, "tau": 0}, "tau"),
        ({"mode": "hard", "alpha": 1.0, "tau": -3}, "tau"),
        ({"mode": "hard", "alpha": 1.0, "tau": 2.5}, "tau"),
        ({"mode": "hard", "alpha": 1.0, "tau": 2.0}, "tau"),
        ({"mode": "hard", "alpha": 1.0, "tau": True}, "tau"),
        ({"mode": "hard", "alpha": 1.0, "tau": "2"}, "tau"),
        ({"mode": "ema", "alpha": 0.5, "tau": 1}, "ref_update"),
        ({"mode": "Soft", "alpha": 0.5, "tau": 1}, "ref_update"),
    ],
)
def test_invalid_schedule_raises(kwargs, key):
    with pytest.raises(ValueError, match=rf"^{key}:") as info:
        ReferenceSchedule(**kwargs)
    assert len(schedule_problems(kwargs["mode"], kwargs["alpha"], kwargs["tau"])) == 1
    assert str(info.value) == schedule_problems(kwargs["mode"], kwargs["alpha"], kwargs["tau"])[0]


def test_schedule_problems_reports_everything_at_once():
    problems = schedule_problems("ema", 1.5, 0)
    assert len(problems) == 3
    assert [p.split(":")[0] for p in problems] == ["ref_update", "alpha", "tau"]
    assert (
        "'ema'" in problems[0] and "none" in problems[0] and "soft" in problems[0] and "hard" in problems[0]
    )
    assert "1.5" in problems[1]
    assert "0" in problems[2]
    with pytest.raises(ValueError) as info:
        ReferenceSchedule(mode="ema", alpha=1.5, tau=0)  # type: ignore[arg-type]
    message = str(info.value)
    for key in ("ref_update", "alpha", "tau"):
        assert key in message
    assert schedule_problems("hard", 1, 7) == []


def test_schedule_is_frozen():
    sched = ReferenceSchedule(mode="hard", alpha=1.0, tau=2)
    with pytest.raises(AttributeError):
        sched.tau = 0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# 5./6. the training module with a real Lightning Trainer
# --------------------------------------------------------------------------------------------

B, T, VOCAB = 2, 8, 32
ACCUM, MAX_STEPS = 3, 6


def _pair_batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    loss_mask = torch.zeros(2 * B, T, dtype=torch.bool)
    loss_mask[:, T // 2 :] = True
    batches = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (2 * B, T), generator=gen)
        ids[B:, : T // 2] = ids[:B, : T // 2]  # rejected rows share the chosen rows' prompts
        batches.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
                "loss_mask": loss_mask.clone(),
            }
        )
    return batches


def _module(schedule: ReferenceSchedule, *, keep_initial: bool = False):
    return module_mod.AlignmentModule(
        tiny_neox(0),
        loss="dpo",
        loss_params={"beta": 0.1, "label_smoothing": 0.0},
        schedule=schedule,
        optim={"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"},
        max_steps=MAX_STEPS,
        keep_initial=keep_initial,
    )


def _fit(module, max_steps: int = MAX_STEPS, ckpt_path: str | None = None, **trainer_kwargs) -> object:
    import lightning as L
    from torch.utils.data import DataLoader

    # 6 micro-batches per epoch = 2 optimizer steps: the run crosses epoch boundaries too.
    loader = DataLoader(_pair_batches(2 * ACCUM), batch_size=None, shuffle=False, num_workers=0)
    kwargs = {
        "max_steps": max_steps,
        "accumulate_grad_batches": ACCUM,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    trainer = L.Trainer(**{**kwargs, **trainer_kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    assert trainer.global_step == max_steps
    return trainer


def _record_updates(monkeypatch, module, check_formula: bool = False) -> list[int]:
    """Wrap tralign.module.update_reference_; record trainer.global_step at each call."""
    steps: list[int] = []
    real = module_mod.update_reference_

    def wrapper(ref, policy, alpha):
        assert ref is module.reference and policy is module.policy
        assert alpha == module.schedule.alpha
        steps.append(module.trainer.global_step)
        ref0, pol0 = _snapshot(ref), _snapshot(policy)
        real(ref, policy, alpha)
        if check_formula:
            for n, r in ref.named_parameters():
                expected = alpha * pol0[n] + (1 - alpha) * ref0[n]
                torch.testing.assert_close(r.detach(), expected, rtol=1e-5, atol=1e-6, msg=n)
        _assert_params_equal(policy, pol0)

    monkeypatch.setattr(module_mod, "update_reference_", wrapper)
    return steps


def test_hard_schedule_under_gradient_accumulation(monkeypatch):
    module = _module(ReferenceSchedule(mode="hard", alpha=1.0, tau=2))
    initial = _snapshot(module.policy)
    steps = _record_updates(monkeypatch, module)
    _fit(module)
    assert steps == [2, 4, 6]  # once per optimizer step, never at 0, never per micro-batch
    assert module.ref_updates == 3
    # Training moved the policy, and the hard update at the last step made the reference equal to it.
    assert any(not torch.equal(p.detach(), initial[n]) for n, p in module.policy.named_parameters())
    _assert_params_equal(module.reference, _snapshot(module.policy))
    assert not set(_ptrs(module.reference).values()) & set(_ptrs(module.policy).values())


def test_soft_schedule_under_gradient_accumulation(monkeypatch):
    module = _module(ReferenceSchedule(mode="soft", alpha=0.5, tau=1))
    initial = _snapshot(module.policy)
    steps = _record_updates(monkeypatch, module, check_formula=True)
    _fit(module)
    assert steps == [1, 2, 3, 4, 5, 6]
    assert module.ref_updates == 6
    ref = _snapshot(module.reference)
    # The reference trails the policy: it moved away from the start but is not a copy.
    assert any(not torch.equal(ref[n], initial[n]) for n in ref)
    assert any(not torch.equal(p.detach(), ref[n]) for n, p in module.policy.named_parameters())


def test_frozen_reference_never_moves(monkeypatch):
    module = _module(ReferenceSchedule(mode="none", alpha=0.0, tau=1))
    initial = _snapshot(module.policy)
    steps = _record_updates(monkeypatch, module)
    _fit(module)
    assert steps == []
    assert module.ref_updates == 0
    _assert_params_equal(module.reference, initial)
    assert any(not torch.equal(p.detach(), initial[n]) for n, p in module.policy.named_parameters())


def test_resume_mid_epoch_continues_the_schedule(monkeypatch, tmp_path):
    """Resumed from the step-3 checkpoint (an update step, mid-epoch), the next update is at step 6:
    none on the first micro-batches after restoring, and the update count carries over."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    schedule = ReferenceSchedule(mode="hard", alpha=1.0, tau=3)
    first = _module(schedule)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    _fit(first, enable_checkpointing=True, callbacks=[saver])
    assert first.ref_updates == 2
    (ckpt,) = tmp_path.glob("*step=3*.ckpt")  # Lightning's own ModelCheckpoint names
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    saved_ref = {
        k.removeprefix("reference."): v for k, v in saved["state_dict"].items() if k.startswith("reference.")
    }
    saved_policy = {
        k.removeprefix("policy."): v for k, v in saved["state_dict"].items() if k.startswith("policy.")
    }
    # At step 3 the hard update had just made the reference a copy of the policy.
    assert all(torch.equal(saved_ref[n], saved_policy[n]) for n, _ in first.policy.named_parameters())

    resumed = _module(schedule)
    steps = _record_updates(monkeypatch, resumed)
    record = module_mod.update_reference_

    def check_restored(ref, policy, alpha):
        if not steps:  # the first update after resuming starts from the checkpoint's reference
            _assert_params_equal(ref, {n: saved_ref[n] for n, _ in ref.named_parameters()})
        record(ref, policy, alpha)

    monkeypatch.setattr(module_mod, "update_reference_", check_restored)
    _fit(resumed, ckpt_path=str(ckpt))
    assert steps == [6]
    assert resumed.ref_updates == 2  # one restored + one after resuming
    _assert_params_equal(resumed.reference, _snapshot(resumed.policy))


def test_frozen_copies_optimizer_and_state_dict():
    module = _module(ReferenceSchedule(mode="soft", alpha=0.6, tau=1), keep_initial=True)
    assert module.reference is not None and module.initial is not None
    module.train()
    assert module.training and module.policy.training
    for frozen in (module.reference, module.initial):
        assert not frozen.training
        assert all(not m.training for m in frozen.modules())
        assert all(not p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in module.policy.parameters())
    # Three independent copies.
    pol_ptrs = set(_ptrs(module.policy).values())
    assert not pol_ptrs & set(_ptrs(module.reference).values())
    assert not pol_ptrs & set(_ptrs(module.initial).values())

    optim = module.configure_optimizers()["optimizer"]
    in_optim = [id(p) for group in optim.param_groups for p in group["params"]]
    assert len(in_optim) == len(set(in_optim))
    assert set(in_optim) == {id(p) for p in module.policy.parameters()}

    keys = module.state_dict().keys()
    ref_keys = {k for k in keys if k.startswith("reference.")}
    assert ref_keys == {f"reference.{k}" for k in module.policy.state_dict()}
    assert any(k.startswith("initial.") for k in keys)
    assert any(k.startswith("policy.") for k in keys)


def test_no_initial_copy_for_frozen_reference():
    module = _module(ReferenceSchedule(mode="none"), keep_initial=True)
    assert module.initial is None
    assert module.initial_model is module.reference
