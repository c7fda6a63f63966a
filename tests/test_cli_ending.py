"""Checkpoint names you can paste (old ``step=N.ckpt`` names still load) and the run's last lines."""

from __future__ import annotations

from pathlib import Path

from tralign.checkpoint import checkpoint_name, newest_checkpoint, resolve_ckpt_path
from tralign.ending import ending


def test_checkpoint_names_hold_no_equals_sign_and_old_names_still_resolve(tmp_path: Path):
    assert checkpoint_name(40) == "step-000040.ckpt"
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step=4.ckpt").write_bytes(b"")  # an earlier version's name
    (ckpts / "last.ckpt").symlink_to("step=4.ckpt")
    assert resolve_ckpt_path(tmp_path / "run") == str(ckpts / "step=4.ckpt")
    assert resolve_ckpt_path("auto", tmp_path / "run") == str(ckpts / "step=4.ckpt")
    (ckpts / checkpoint_name(6)).write_bytes(b"")  # the run resumed and went on under the new names
    (ckpts / checkpoint_name(12)).with_suffix(".ckpt.partial").write_bytes(b"")
    assert newest_checkpoint(ckpts) == ckpts / "step-000006.ckpt"
    assert resolve_ckpt_path(tmp_path / "run") == str(ckpts / "step-000006.ckpt")


def test_pruning_keeps_the_newest_of_old_and_new_names(tmp_path: Path):
    from tralign.checkpoint import AtomicCheckpoint

    for name in ("step=2.ckpt", "step=4.ckpt", checkpoint_name(6), checkpoint_name(8)):
        (tmp_path / name).write_bytes(b"")
    AtomicCheckpoint(tmp_path, every_n_steps=2, keep=2)._prune(tmp_path, resumed_from=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000006.ckpt", "step-000008.ckpt"]


def test_ending_names_the_folders_and_says_what_the_run_did(tmp_path: Path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / checkpoint_name(40)).write_bytes(b"")
    summary = {
        "method": "tr_dpo",
        "ref_update": "soft",
        "alpha": 0.6,
        "tau": 1,
        "beta": 0.1,
        "global_step": 40,
        "val": {"val/rewards/accuracies": 0.75},
        "golden_reward_init": -0.5,
        "golden_reward": 0.25,
        "policy_dir": str(tmp_path / "policy"),
    }
    text = ending(summary, tmp_path)
    assert f"checkpoint:  {tmp_path / 'checkpoints' / 'step-000040.ckpt'}" in text
    assert f"policy:      {tmp_path / 'policy'}" in text
    assert "tr_dpo (soft update α=0.6 τ=1, β=0.1), 40 steps, golden reward -0.500 → 0.250, " in text
    assert ", val accuracy vs reference 0.750\nresume:" in text  # labelled, and last
    start = ending(
        {**summary, "golden_kl_init": 3.25, "val": {**summary["val"], "val/init/rewards/accuracies": 0.7}},
        tmp_path,
    )
    assert (
        "golden reward -0.500 → 0.250, KL from start 3.25, val accuracy vs start 0.700, val accuracy vs reference 0.750"
        in start
    )
    # The last step copied the policy into the reference: the reference-relative accuracy is no result.
    reset = ending(
        {**summary, "ref_update": "hard", "alpha": 1.0, "tau": 20, "ref_updates": 2, "applied_steps": 40},
        tmp_path,
    )
    assert (
        "val accuracy vs reference: empty (reference = policy at the last step)" in reset
        and "0.750" not in reset
    )
    frozen = ending({**summary, "ref_update": "none", "method": "dpo"}, tmp_path / "elsewhere")
    assert "dpo (frozen reference, β=0.1)" in frozen and "none written" in frozen
