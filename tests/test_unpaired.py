"""Unpaired KTO: encoding and collation of (prompt, completion, label) rows with the mismatched KL
block, the module's unpaired step against ``kto_loss`` on hand-built log-probs, the config checks,
and end-to-end runs of ``method=kto_unpaired`` / ``tr_kto_unpaired`` on the synthetic task."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.config import SYNTH_TASK, compose_cfg

from tralign.config import validate
from tralign.data.collate import UnpairedCollator
from tralign.data.datamodule import PreferenceDataModule
from tralign.data.sources import Split, load_split
from tralign.data.synthetic import SyntheticTask
from tralign.data.tokenize import Lengths, encode_row
from tralign.errors import ConfigError, DataError
from tralign.logprobs import sequence_logps
from tralign.losses import LOSSES, kto_loss
from tralign.models import build_policy
from tralign.module import AlignmentModule
from tralign.reference import ReferenceSchedule
from tralign.train import run

DM_CFG = {
    "name": "synthetic",
    "n_train": 32,
    "n_val": 8,
    "task": SYNTH_TASK,
    "max_length": 48,
    "max_prompt_length": 16,
    "batch_size": 4,
    "eval_batch_size": 8,
}


@pytest.fixture(scope="module")
def tok():
    return SyntheticTask().build_tokenizer()


def _unpair(rows: list[dict[str, str]]) -> list[dict]:
    out = []
    for r in rows:
        out += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True}]
        out += [{"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
    return out


@pytest.fixture(scope="module")
def unpaired_split() -> Split:
    pairs = load_split(DM_CFG)
    return Split(train=_unpair(pairs.train), val=_unpair(pairs.val), kind="unpaired")


# --------------------------------------------------------------------------- encoding and collation


def test_data_mode_of_each_loss() -> None:
    assert [LOSSES[n].data_mode for n in ("dpo", "ipo", "kto_pair", "kto", "sft")] == [
        "pair",
        "pair",
        "pair",
        "unpaired",
        "sft",
    ]


def test_encode_unpaired_row(tok) -> None:
    row = {"prompt": "Q: fox owl ->", "completion": " red blue", "label": False}
    example, truncated = encode_row(tok, row, Lengths(48, 16), mode="unpaired")
    ids = tok("Q: fox owl ->", add_special_tokens=False)["input_ids"]
    assert example == {
        "prompt_ids": ids,
        "completion_ids": tok(" red blue", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
        "label": False,
    }
    assert truncated is False


def _ex(prompt: list[int], completion: list[int], label: bool) -> dict:
    return {"prompt_ids": prompt, "completion_ids": completion, "label": label}


def test_unpaired_collator_layout_and_mismatched_rows() -> None:
    examples = [
        _ex([10, 11], [20, 1], True),
        _ex([12], [21, 22, 23, 1], False),
        _ex([13, 14, 15], [24, 1], True),
    ]
    batch = UnpairedCollator(pad_id=0, max_length=6)(examples)
    assert batch["input_ids"].tolist() == [[10, 11, 20, 1, 0], [12, 21, 22, 23, 1], [13, 14, 15, 24, 1]]
    assert batch["labels"].tolist() == [True, False, True] and batch["labels"].dtype == torch.bool
    # Row i's prompt with row (i + 1) mod B's completion; the third borrows a 4-token completion
    # after a 3-token prompt and is cut to max_length 6 (its start kept).
    assert batch["kl_input_ids"].tolist() == [
        [10, 11, 21, 22, 23, 1],
        [12, 24, 1, 0, 0, 0],
        [13, 14, 15, 20, 1, 0],
    ]
    assert batch["kl_loss_mask"].tolist() == [
        [False, False, True, True, True, True],
        [False, True, True, False, False, False],
        [False, False, False, True, True, False],
    ]
    assert batch["kl_attention_mask"].sum(-1).tolist() == [6, 3, 5]
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "loss_mask",
        "kl_input_ids",
        "kl_attention_mask",
        "kl_loss_mask",
        "labels",
    }


def test_unpaired_collator_never_borrows_from_the_same_prompt() -> None:
    # data.unpair=true puts a pair's two rows side by side: shifting by one would pair row 0's
    # prompt with its own rejected answer, which is not a mismatched pair.
    p, q = [10, 11], [12]
    examples = [_ex(p, [20, 1], True), _ex(p, [21, 1], False), _ex(q, [22, 1], True), _ex(q, [23, 1], False)]
    batch = UnpairedCollator(pad_id=0, max_length=8)(examples)
    borrowed = [
        row[mask].tolist() for row, mask in zip(batch["kl_input_ids"], batch["kl_loss_mask"], strict=True)
    ]
    assert borrowed == [[22, 1], [22, 1], [20, 1], [20, 1]]
    single = UnpairedCollator(pad_id=0, max_length=8)([_ex(p, [20, 1], True), _ex(p, [21, 1], False)])
    assert single["kl_input_ids"].tolist() == [[10, 11, 21, 1], [10, 11, 20, 1]]  # no other prompt: shift


def test_unpaired_datamodule(tok, unpaired_split: Split) -> None:
    dm = PreferenceDataModule(DM_CFG, tok, mode="unpaired", split=unpaired_split)
    assert dm.stats["data/train_rows"] == 64 and dm.stats["data/val_rows"] == 16
    batches = list(dm.train_dataloader())
    assert len(batches) == 16
    for batch in batches:
        assert batch["input_ids"].shape[0] == batch["kl_input_ids"].shape[0] == batch["labels"].shape[0] == 4
    labels = torch.cat([b["labels"] for b in batches])
    assert int(labels.sum()) == 32  # every row once: half desirable
    assert dm.train_examples[1] == encode_row(tok, unpaired_split.train[1], dm.lengths, mode="unpaired")[0]


def test_datamodule_refuses_rows_of_the_wrong_kind(tok, unpaired_split: Split) -> None:
    with pytest.raises(DataError, match="gives unpaired rows, but this method trains on pair data"):
        PreferenceDataModule(DM_CFG, tok, mode="pair", split=unpaired_split)
    with pytest.raises(DataError, match="gives pair rows, but this method trains on unpaired data"):
        PreferenceDataModule(DM_CFG, tok, mode="unpaired", split=load_split(DM_CFG))


# --------------------------------------------------------------------------- the module's step


def test_unpaired_step_is_kto_loss_on_the_two_blocks(tok, unpaired_split: Split) -> None:
    cfg = compose_cfg(["method=kto_unpaired", "++data.unpair=true"])
    policy = build_policy(cfg.model, tok)
    params = {"beta": 0.5, "desirable_weight": 1.0, "undesirable_weight": 2.0}
    module = AlignmentModule(
        policy, loss="kto", loss_params=params, schedule=ReferenceSchedule(), optim={"lr": 1e-3}, max_steps=1
    )
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)  # one process
    with torch.no_grad():
        # A uniform policy head against the random reference: log-ratios are mostly positive
        # (Jensen), so z > 0 and the loss depends on the mismatched block, not only on the clamp.
        module.policy.get_output_embeddings().weight.mul_(0.01)
    dm = PreferenceDataModule(DM_CFG, tok, mode="unpaired", split=unpaired_split)
    batch = dm.collate([dm.train_examples[i] for i in (0, 3, 4, 6)])  # labels T, F, T, T

    def logps(model, prefix: str) -> torch.Tensor:
        ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
        with torch.no_grad():
            return sequence_logps(
                model(input_ids=ids, attention_mask=mask).logits, ids, batch[f"{prefix}loss_mask"]
            )[0]

    expected = kto_loss(
        logps(module.policy, ""),
        logps(module.reference, ""),
        logps(module.policy, "kl_"),
        logps(module.reference, "kl_"),
        batch["labels"],
        **params,
    )
    out, kl = module._unpaired_step(batch)
    torch.testing.assert_close(out.losses, expected.losses)
    torch.testing.assert_close(out.chosen_rewards, expected.chosen_rewards)
    torch.testing.assert_close(out.rejected_rewards, expected.rejected_rewards)
    assert out.chosen_rewards.shape == (3,) and out.rejected_rewards.shape == (1,)
    z = (logps(module.policy, "kl_") - logps(module.reference, "kl_")).mean().clamp(min=0)
    assert z > 0.1
    torch.testing.assert_close(kl, z)
    out.losses.mean().backward()
    assert all(p.grad is None for p in module.reference.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.policy.parameters())
    metrics = module._unpaired_metrics("train", out, kl)
    assert metrics["train/rewards/chosen"][1] == 3 and metrics["train/rewards/rejected"][1] == 1
    torch.testing.assert_close(metrics["train/rewards/rejected"][0], expected.rejected_rewards.mean())
    empty = module._unpaired_metrics("val", out._replace(rejected_rewards=out.rejected_rewards[:0]), kl)
    assert empty["val/rewards/rejected"][1] == 0 and empty["val/rewards/rejected"][0].item() == 0.0


# --------------------------------------------------------------------------- configs


def test_unpaired_loss_needs_unpaired_data() -> None:
    with pytest.raises(ConfigError, match=r"method.loss: 'kto' needs unpaired data .*data.unpair=true"):
        validate(compose_cfg(["method=kto_unpaired"]))
    validate(compose_cfg(["method=kto_unpaired", "++data.unpair=true"]))
    validate(compose_cfg(["method=tr_kto_unpaired", "++data.unpair=true"]))


def test_paired_loss_refuses_unpaired_data() -> None:
    for method in ("dpo", "tr_kto", "sft"):
        extra = ["ref_update=none"] if method == "sft" else []
        with pytest.raises(ConfigError, match="unpaired"):
            validate(compose_cfg([f"method={method}", "++data.unpair=true", *extra]))


def test_method_configs() -> None:
    base = compose_cfg(["method=kto_unpaired", "++data.unpair=true"], shrink=False)
    tr = compose_cfg(["method=tr_kto_unpaired", "++data.unpair=true"], shrink=False)
    assert (base.method.loss, base.method.trust_region, base.ref_update) == ("kto", False, "none")
    assert (tr.method.loss, tr.method.trust_region, tr.ref_update) == ("kto", True, "soft")
    assert {k: base.method[k] for k in ("desirable_weight", "undesirable_weight")} == {
        "desirable_weight": 1.0,
        "undesirable_weight": 1.0,
    }


# --------------------------------------------------------------------------- end to end


def _unpair_supported() -> bool:
    split = load_split({**DM_CFG, "unpair": True})
    return getattr(split, "kind", "pair") == "unpaired"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "ref_update", "updates"), [("kto_unpaired", "none", 0), ("tr_kto_unpaired", "soft", 2)]
)
@pytest.mark.e2e
def test_kto_unpaired_trains_end_to_end(method: str, ref_update: str, updates: int, tmp_path: Path) -> None:
    if not _unpair_supported():
        pytest.skip("data.unpair=true is not supported by tralign.data.sources yet")
    cfg = compose_cfg([f"method={method}", f"ref_update={ref_update}", "tau=2", "++data.unpair=true"])
    summary = run(cfg, tmp_path)
    assert (summary["status"], summary["loss"], summary["global_step"]) == ("completed", "kto", 4)
    assert summary["ref_updates"] == updates
    assert summary["data/train_rows"] == 2 * 64  # each synthetic pair became two rows
    for key in ("loss", "rewards/chosen", "rewards/rejected", "kl"):
        value = summary["val"][f"val/{key}"]
        assert value is not None and value == value, key
        assert f"train/{key}" in summary["train"] or key.startswith("rewards/"), key
    assert summary["val"]["val/kl"] >= 0
    assert (tmp_path / "policy" / "model.safetensors").is_file()
