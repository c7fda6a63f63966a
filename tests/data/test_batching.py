"""Batching: the length-grouped sampler (determinism, coverage, DDP shares, homogeneity, Lightning's
epoch hook), padding on the real HH sample, the tokenised-data cache, rows that cannot train after
truncation, and ``python -m tralign.data.inspect``."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from helpers.config import SHRINK, compose_cfg, synthetic_data_cfg
from helpers.paths import SHARED
from helpers.processes import run_cli, run_python
from torch.utils.data import DataLoader, DistributedSampler

from tralign.data import tokenize
from tralign.data.cache import cache_dir_for
from tralign.data.collate import pad_fraction
from tralign.data.datamodule import PreferenceDataModule, row_lengths
from tralign.data.inspect import report
from tralign.data.sampler import LengthGroupedBatchSampler, padding_fraction
from tralign.data.sources import Split, load_split
from tralign.data.synthetic import SyntheticTask
from tralign.data.tokenize import Lengths, encode_columns, encode_row
from tralign.errors import DataError

HH_TEST = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
ASSISTANT = "\n\nAssistant:"


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 500) for _ in range(n)]


def _epoch(sampler: LengthGroupedBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.fixture(scope="module")
def hh_rows() -> list[dict[str, str]]:
    """The HH harmless-base sample as prompt/chosen/rejected, split at the last "\\n\\nAssistant:"."""
    if not HH_TEST.is_file():
        pytest.skip("../shared (HH sample) not present")
    rows = []
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            cut = obj["chosen"].rfind(ASSISTANT) + len(ASSISTANT)
            prompt = obj["chosen"][:cut]
            if not obj["rejected"].startswith(prompt):  # the few dialogues that diverge earlier
                continue
            chosen, rejected = obj["chosen"][cut:], obj["rejected"][cut:]
            if chosen.strip() and rejected.strip() and chosen != rejected:
                rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    assert len(rows) > 2000
    return rows


# --------------------------------------------------------------------------- the sampler


def test_sampler_is_a_function_of_seed_and_epoch() -> None:
    lengths = _lengths(1000)
    a, b = LengthGroupedBatchSampler(lengths, 8, seed=3), LengthGroupedBatchSampler(lengths, 8, seed=3)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 1) == _epoch(b, 1)
    assert _epoch(a, 0) != _epoch(a, 1)  # a new order every epoch
    assert _epoch(a, 0) == _epoch(LengthGroupedBatchSampler(lengths, 8, seed=3), 0)  # back to epoch 0
    assert _epoch(a, 0) != _epoch(LengthGroupedBatchSampler(lengths, 8, seed=4), 0)


@pytest.mark.parametrize("group_by_length", [True, False])
def test_sampler_every_index_exactly_once_per_epoch(group_by_length: bool) -> None:
    sampler = LengthGroupedBatchSampler(_lengths(800), 8, group_by_length=group_by_length)
    for epoch in range(3):
        batches = _epoch(sampler, epoch)
        assert len(batches) == len(sampler) == 100
        assert all(len(b) == 8 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(800))


def test_sampler_leftover_rows_change_with_epoch() -> None:
    sampler = LengthGroupedBatchSampler(_lengths(805), 8)  # 5 rows left over each epoch
    seen = []
    for epoch in range(4):
        rows = [i for b in _epoch(sampler, epoch) for i in b]
        assert len(rows) == len(set(rows)) == 800
        seen.append(set(range(805)) - set(rows))
    assert len({frozenset(s) for s in seen}) > 1


@pytest.mark.parametrize("n", [1003, 40, 10])
def test_sampler_two_ranks_get_disjoint_equal_shares(n: int) -> None:
    lengths = _lengths(n)
    ranks = [LengthGroupedBatchSampler(lengths, 8, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    for epoch in (0, 1):
        shares = [_epoch(s, epoch) for s in ranks]
        assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == len(ranks[1]) >= 1
        rows = [[i for b in share for i in b] for share in shares]
        assert not set(rows[0]) & set(rows[1])
        assert len(rows[0]) == len(set(rows[0])) and len(rows[1]) == len(set(rows[1]))
        # Step k of the two ranks together is global batch k, split row by row.
        global_batches = ranks[0].global_batches()
        assert [sorted(a + b) for a, b in zip(*shares, strict=True)] == [sorted(g) for g in global_batches]
    if n == 1003:
        assert len(ranks[0]) == 1003 // 16
    if n == 10:  # fewer rows than a full batch per rank: one smaller batch each
        assert [len(b) for b in _epoch(ranks[0], 0)] == [5]


@pytest.mark.parametrize("group_by_length", [True, False])
def test_two_ranks_train_on_what_one_process_with_the_global_batch_does(group_by_length: bool) -> None:
    """W ranks with batch B see, step by step, the rows of one process with batch W·B."""
    lengths = _lengths(500)
    one = LengthGroupedBatchSampler(lengths, 8, seed=3, group_by_length=group_by_length)
    two = [
        LengthGroupedBatchSampler(lengths, 4, seed=3, group_by_length=group_by_length, num_replicas=2, rank=r)
        for r in (0, 1)
    ]
    for epoch in (0, 1):
        single = _epoch(one, epoch)
        pairs = zip(*(_epoch(s, epoch) for s in two), strict=True)
        assert [sorted(a + b) for a, b in pairs] == [sorted(b) for b in single]


def test_resume_at_skips_the_finished_batches_of_that_epoch_only() -> None:
    sampler = LengthGroupedBatchSampler(_lengths(200), 8, seed=5)
    full = {epoch: _epoch(sampler, epoch) for epoch in (0, 1)}
    sampler.set_epoch(1)
    sampler.resume_at(1, 7)
    assert list(sampler) == full[1][7:]
    assert list(sampler) == full[1]  # one-shot: the next pass over the epoch is whole again
    sampler.resume_at(0, 7)
    sampler.set_epoch(1)  # resumed from the end of epoch 0: epoch 1 starts at its beginning
    assert list(sampler) == full[1]


def test_sampler_refuses_more_ranks_than_rows() -> None:
    with pytest.raises(ValueError, match="cannot be shared"):
        LengthGroupedBatchSampler([3], 8, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="rank"):
        LengthGroupedBatchSampler([3, 4], 8, num_replicas=2, rank=2)


def _spread(batches: list[list[int]], lengths: list[int]) -> float:
    return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)


def test_grouped_batches_are_length_homogeneous() -> None:
    lengths = _lengths(4000)
    grouped = _epoch(LengthGroupedBatchSampler(lengths, 8, seed=0), 0)
    shuffled = _epoch(LengthGroupedBatchSampler(lengths, 8, seed=0, group_by_length=False), 0)
    spread_grouped, spread_shuffled = _spread(grouped, lengths), _spread(shuffled, lengths)
    # A sorted mega-batch of 400 rows over lengths 1..500: neighbours differ by ~1.25 per row.
    assert spread_grouped < 20 < 300 < spread_shuffled, (spread_grouped, spread_shuffled)
    rows = [[n] for n in lengths]
    assert padding_fraction(grouped, rows) < 0.05 < 0.4 < padding_fraction(shuffled, rows)
    # The longest batch runs first (an out-of-memory shows at once), and the rest are not sorted.
    maxima = [max(lengths[i] for i in b) for b in grouped]
    assert maxima[0] == max(lengths)
    assert maxima[1:] != sorted(maxima[1:]) and maxima[1:] != sorted(maxima[1:], reverse=True)


def test_padding_fraction_arithmetic() -> None:
    # Batch [0, 1]: rows 3, 5 | 2, 2 -> width 5 over 4 rows = 20 positions, 12 real.
    assert padding_fraction([[0, 1]], [[3, 5], [2, 2]]) == pytest.approx(8 / 20)
    assert padding_fraction([[0], [1]], [[3, 5], [2, 2]]) == pytest.approx((2 + 0) / (10 + 4))
    assert padding_fraction([], []) == 0.0


class _Recorder(L.LightningModule):
    """Records the batches Lightning feeds it, per epoch; trains one dummy weight."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[list[int]]] = {}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.setdefault(self.current_epoch, []).extend(batch["input_ids"].tolist())
        return self.w * 0.0 + self.w.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_advances_the_sampler_epoch(synth_tok, tmp_path: Path) -> None:
    # Lightning calls set_epoch on batch_sampler.sampler, not on the batch sampler: the epoch must
    # reach us through that attribute, or every epoch would repeat the first one's order.
    dm = PreferenceDataModule(synthetic_data_cfg(), synth_tok, seed=0)
    module = _Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=dm)
    assert set(module.seen) == {0, 1}
    assert module.seen[0] != module.seen[1]
    for epoch in (0, 1):
        sampler = dm.train_batch_sampler()
        sampler.set_epoch(epoch)
        expected = [
            row
            for b in sampler
            for row in dm.collate(dm.train_examples.__getitems__(b))["input_ids"].tolist()
        ]
        assert module.seen[epoch] == expected


# --------------------------------------------------------------------------- the data module


def test_datamodule_shards_under_a_parallel_strategy(synth_tok) -> None:
    dm = PreferenceDataModule(synthetic_data_cfg(), synth_tok, seed=0)
    single = dm.train_dataloader().batch_sampler
    assert (single.num_replicas, single.rank) == (1, 0)
    assert dm.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"
    shares = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        batch_sampler = dm.train_dataloader().batch_sampler
        assert (batch_sampler.num_replicas, batch_sampler.rank) == (2, rank)
        shares.append({i for b in batch_sampler for i in b})
        val = dm.val_dataloader().sampler
        assert isinstance(val, DistributedSampler) and (val.num_replicas, val.rank, val.shuffle) == (
            2,
            rank,
            False,
        )
    assert not shares[0] & shares[1] and len(shares[0]) == len(shares[1]) == 32


def test_validation_batches_keep_row_order(synth_tok) -> None:
    dm = PreferenceDataModule(synthetic_data_cfg(n_val=20), synth_tok, seed=0)
    val = list(dm.val_dataloader())
    assert [b["input_ids"].shape[0] // 2 for b in val] == [8, 8, 4]
    expected = dm.collate(dm.val_examples[8:16])
    assert torch.equal(val[1]["input_ids"], expected["input_ids"])


def test_group_by_length_flag(synth_tok) -> None:
    dm = PreferenceDataModule(synthetic_data_cfg(n_train=512, group_by_length=False), synth_tok, seed=0)
    assert dm.train_dataloader().batch_sampler.group_by_length is False
    assert PreferenceDataModule(synthetic_data_cfg(), synth_tok).group_by_length is True  # the default


@pytest.fixture(scope="module")
def hh_datamodule(pythia, hh_rows) -> PreferenceDataModule:
    cfg = {
        "name": "hh",
        "max_length": 1024,
        "max_prompt_length": 512,
        "batch_size": 8,
        "eval_batch_size": 16,
        "cache": False,
    }
    return PreferenceDataModule(cfg, pythia, seed=0, split=Split(train=hh_rows, val=hh_rows[:16]))


def _collated_pad_fraction(loader: DataLoader) -> tuple[float, float]:
    """(token-weighted, mean per batch) padding share of the collated batches."""
    pads = positions = 0
    per_batch = []
    for batch in loader:
        mask = batch["attention_mask"]
        pads += int((mask == 0).sum())
        positions += mask.numel()
        per_batch.append(pad_fraction(batch))
    return pads / positions, sum(per_batch) / len(per_batch)


@pytest.mark.slow  # tokenising the sample takes most of its ~10 s
def test_length_grouping_lowers_padding_on_hh(hh_datamodule: PreferenceDataModule) -> None:
    dm = hh_datamodule
    measured = {}
    for grouped in (False, True):
        dm.group_by_length = grouped
        measured[grouped] = _collated_pad_fraction(dm.train_dataloader())
    dm.group_by_length = True
    print(
        f"\nHH harmless-base test sample, {len(dm.train_examples)} pairs, batch 8, max_length 1024: padding "
        f"{measured[False][0]:.3f} random batches -> {measured[True][0]:.3f} length-grouped "
        f"(mean per batch {measured[False][1]:.3f} -> {measured[True][1]:.3f})"
    )
    assert measured[True][0] < measured[False][0]
    assert measured[True][1] < measured[False][1]
    # The arithmetic inspect uses agrees with the collated tensors.
    per_example = row_lengths(dm.tables["train"], "pair")
    for grouped in (False, True):
        batches = dm.train_batch_sampler(group_by_length=grouped).global_batches()
        assert padding_fraction(batches, per_example) == pytest.approx(measured[grouped][0])


def test_batched_encoding_matches_per_row_reference(pythia, hh_rows) -> None:
    rows = hh_rows[:200]
    for lengths in (Lengths(1024, 512), Lengths(96, 64)):  # the second cuts most rows
        columns = {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")}
        encoded = encode_columns(pythia, columns, lengths, mode="pair")
        n_truncated = 0
        for i, row in enumerate(rows):
            example, truncated = encode_row(pythia, row, lengths, mode="pair")
            assert {k: encoded[k][i] for k in example} == example
            assert encoded["truncated"][i] == truncated
            assert encoded["length"][i] == len(example["prompt_ids"]) + max(
                len(example["chosen_ids"]), len(example["rejected_ids"])
            )
            assert encoded["raw_chosen"][i] == len(
                pythia(row["chosen"], add_special_tokens=False)["input_ids"]
            )
            n_truncated += truncated
        assert (n_truncated > 100) == (lengths.max_length == 96)


# --------------------------------------------------------------------------- the cache


def test_cache_dir_defaults(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRALIGN_CACHE", str(tmp_path / "env"))
    assert cache_dir_for({"name": "synthetic"}) is None  # milliseconds to tokenise: not worth files
    assert cache_dir_for({"name": "hh"}) == tmp_path / "env" / "tokenized"
    assert cache_dir_for({"name": "hh", "cache_dir": str(tmp_path / "cfg")}) == tmp_path / "cfg" / "tokenized"
    assert cache_dir_for({"name": "hh", "cache": False}) is None
    assert cache_dir_for({"name": "synthetic", "cache": True}) == tmp_path / "env" / "tokenized"
    monkeypatch.delenv("TRALIGN_CACHE")
    assert cache_dir_for({"name": "hh"}) == Path("~/.cache/tralign").expanduser() / "tokenized"


def test_second_run_skips_tokenisation(synth_tok, monkeypatch, tmp_path: Path) -> None:
    calls = []
    original = tokenize.encode_columns

    def counting(*args, **kwargs):
        calls.append(len(args[1]["prompt"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(tokenize, "encode_columns", counting)
    cfg = synthetic_data_cfg(cache=True, cache_dir=str(tmp_path))
    split = load_split(cfg)

    first = PreferenceDataModule(cfg, synth_tok, split=split)
    assert sum(calls) == 64 + 16
    assert first.cache["train"].startswith("written: ") and first.cache["val"].startswith("written: ")
    files = sorted((tmp_path / "tokenized").glob("*.arrow"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]

    calls.clear()
    second = PreferenceDataModule(cfg, synth_tok, split=load_split(cfg))
    assert calls == []  # nothing tokenised
    assert second.cache["train"] == first.cache["train"].replace("written: ", "hit: ")
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert list(second.train_examples) == list(first.train_examples)
    assert second.stats == first.stats
    assert [b["input_ids"].tolist() for b in second.train_dataloader()] == [
        b["input_ids"].tolist() for b in first.train_dataloader()
    ]

    # Anything the ids depend on misses: lengths, mode, the rows themselves, the tokenizer.
    PreferenceDataModule({**cfg, "max_length": 40}, synth_tok, split=split)
    assert sum(calls) == 64 + 16
    calls.clear()
    PreferenceDataModule(cfg, synth_tok, mode="sft", split=split)
    assert sum(calls) == 64 + 16
    calls.clear()
    edited = Split(train=[{**split.train[0], "chosen": " red"}, *split.train[1:]], val=split.val)
    PreferenceDataModule(cfg, synth_tok, split=edited)
    assert calls == [64]  # the validation rows did not change
    calls.clear()
    other_tok = SyntheticTask(n_words=30).build_tokenizer()  # a larger vocabulary
    PreferenceDataModule(cfg, other_tok, split=split)
    assert sum(calls) == 64 + 16


def test_cache_off_writes_nothing(synth_tok, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRALIGN_CACHE", str(tmp_path))
    dm = PreferenceDataModule(synthetic_data_cfg(), synth_tok)
    assert dm.cache == {"train": None, "val": None}
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- rows that cannot train


def _rows(n: int) -> list[dict[str, str]]:
    words = SyntheticTask().words()
    return [
        {"prompt": "Q: fox ->", "chosen": f" {words[i % 20]} owl", "rejected": f" {words[i % 20]}"}
        for i in range(n)
    ]


def test_empty_completion_is_refused_with_row_and_split(synth_tok) -> None:
    train = _rows(6)
    train[1] = {**train[1], "chosen": ""}  # tokenises to nothing: only EOS would be left
    train[4] = {**train[4], "rejected": "   "}
    val = _rows(3)
    val[2] = {**val[2], "chosen": " \n "}
    with pytest.raises(DataError) as info:
        PreferenceDataModule(synthetic_data_cfg(), synth_tok, split=Split(train=train, val=val))
    message = str(info.value)
    assert message.startswith("3 row(s) cannot train after tokenisation")
    assert "train row 1: chosen has no tokens" in message
    assert "train row 4: rejected has no tokens" in message
    assert "val row 2: chosen has no tokens" in message
    assert "data.on_bad_rows=skip" in message and "\n" not in message


def test_empty_completion_is_dropped_with_skip(synth_tok, caplog) -> None:
    train = _rows(6)
    train[1] = {**train[1], "chosen": ""}
    dm = PreferenceDataModule(
        synthetic_data_cfg(on_bad_rows="skip"), synth_tok, split=Split(train=train, val=_rows(2))
    )
    assert (dm.stats["data/train_rows"], dm.stats["data/train_dropped"], dm.stats["data/val_dropped"]) == (
        5,
        1,
        0,
    )
    prompts_and_chosen = [(e["prompt_ids"], e["chosen_ids"]) for e in dm.train_examples]
    kept = [encode_row(synth_tok, r, dm.lengths, mode="pair")[0] for i, r in enumerate(train) if i != 1]
    assert prompts_and_chosen == [(e["prompt_ids"], e["chosen_ids"]) for e in kept]
    assert "dropped 1 row(s)" in caplog.text and "train row 1" in caplog.text
    assert sorted(i for b in dm.train_dataloader().batch_sampler for i in b) == list(range(5))


def test_sft_checks_only_the_trained_completion(synth_tok) -> None:
    train = _rows(4)
    train[0] = {**train[0], "rejected": ""}  # SFT trains on chosen: the empty rejected is never seen
    dm = PreferenceDataModule(
        synthetic_data_cfg(), synth_tok, mode="sft", split=Split(train=train, val=_rows(2))
    )
    assert dm.stats["data/train_dropped"] == 0 and dm.stats["data/train_rows"] == 4


def test_pair_identical_after_truncation_is_a_bad_row(synth_tok) -> None:
    row = {"prompt": "Q: fox ->", "chosen": " red blue green gold", "rejected": " red blue green cat"}
    cfg = synthetic_data_cfg(max_length=6, max_prompt_length=3)  # room 3: both sides become "red blue green"
    with pytest.raises(
        DataError, match=r"train row 0: chosen and rejected are identical after truncation to 3"
    ):
        PreferenceDataModule(cfg, synth_tok, split=Split(train=[row, *_rows(3)], val=_rows(1)))


def test_no_room_for_the_completion_is_impossible() -> None:
    # A kept prompt is at most max_prompt_length < max_length tokens, so every completion keeps >= 1.
    with pytest.raises(ValueError, match="max_prompt_length"):
        Lengths(8, 8)
    prompt, (completion,), truncated = tokenize.truncate(list(range(50)), [[7, 8, 9]], Lengths(8, 7))
    assert len(prompt) == 7 and completion == [7] and truncated


# --------------------------------------------------------------------------- inspect


def test_inspect_report_on_the_synthetic_task() -> None:
    text = report(compose_cfg(["data.n_train=512", "data.batch_size=8"]))
    lines = text.splitlines()
    assert lines[0].startswith("data=synthetic: pair rows, tokenised for method=tr_dpo (pair)")
    assert "rows dropped by the source (data.on_bad_rows=skip): 0" in text
    train_row = next(line.split() for line in lines if line.strip().startswith("train ") and "512" in line)
    assert train_row == ["train", "512", "0", "0"]
    for label in ("prompt", "chosen", "rejected"):
        assert any(line.split()[0] == label and len(line.split()) == 5 for line in lines), label
    padding = next(line for line in lines if line.startswith("padding"))
    random_share, grouped_share = (
        float(w) for w in padding.replace(",", "").split() if w[0].isdigit() and "." in w
    )
    assert 0 <= grouped_share < random_share < 1
    assert "tokenised train data: not cached" in text


@pytest.mark.slow
@pytest.mark.e2e
def test_inspect_cli(tmp_path: Path) -> None:
    shrink = [a for a in SHRINK if a.startswith("data.")]
    result = run_cli(
        "tralign.data.inspect",
        [*shrink, "method=sft", "ref_update=none"],
        tmp_path,
        TRALIGN_CACHE=str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data=synthetic: pair rows, tokenised for method=sft (sft)" in result.stdout
    assert "padding in one epoch of training batches" in result.stdout
    assert any(
        line.split()[:1] == ["completion"] or line.split()[:1] == ["chosen"]
        for line in result.stdout.splitlines()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "inspect must not write run folders or logs"

    bad = run_cli(
        "tralign.data.inspect",
        ["data=jsonl", "data.path=/nonexistent.jsonl", "model.tokenizer=t"],
        tmp_path,
        TRALIGN_CACHE=str(tmp_path / "cache"),
    )
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("tralign: error: invalid config:"), bad.stderr
    assert "data.path=/nonexistent.jsonl" in errors[0]


DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
from tralign.data.datamodule import PreferenceDataModule
from tralign.data.synthetic import SyntheticTask

class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.steps = 0

    def on_train_start(self):
        sampler = self.trainer.train_dataloader.batch_sampler
        self.share = {"num_replicas": sampler.num_replicas, "rank": sampler.rank, "rows": [i for b in sampler for i in b]}

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return self.w * 0.0

    def on_train_end(self):
        out = {**self.share, "steps": self.steps, "global_rank": self.global_rank}
        with open(f"{sys.argv[1]}/rank{self.global_rank}.json", "w") as fh:
            json.dump(out, fh)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

cfg = {"name": "synthetic", "n_train": 100, "n_val": 8, "max_length": 48, "max_prompt_length": 16,
       "batch_size": 8, "eval_batch_size": 8,
       "task": {"seed": 0, "n_words": 24, "n_keys": 2, "min_len": 2, "max_len": 8, "label_temperature": 0.25}}
tok = SyntheticTask().build_tokenizer()
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, use_distributed_sampler=False)
trainer.fit(Recorder(), datamodule=PreferenceDataModule(cfg, tok, seed=0))
"""


@pytest.mark.slow
@pytest.mark.e2e
def test_two_process_ddp_gets_disjoint_equal_shares(tmp_path: Path) -> None:
    script = tmp_path / "ddp_shares.py"
    script.write_text(DDP_SCRIPT)
    result = run_python([str(script), str(tmp_path)], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shares = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(s["num_replicas"], s["rank"]) for s in shares] == [(2, 0), (2, 1)]
    assert not set(shares[0]["rows"]) & set(shares[1]["rows"])
    # 100 rows, 8 per batch and 2 ranks: 6 batches each, 4 rows wait for the next epoch.
    assert len(shares[0]["rows"]) == len(shares[1]["rows"]) == 48
    assert shares[0]["steps"] == shares[1]["steps"] == 6


def test_resumable_loader_refuses_another_global_batch_but_not_another_rank_count(synth_tok) -> None:
    from types import SimpleNamespace

    from tralign.errors import DataError

    dm = PreferenceDataModule(synthetic_data_cfg(batch_size=4), synth_tok, seed=0)
    dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": 0})
    loader = dm.train_dataloader()  # 2 ranks x 4 rows: global batches of 8
    loader.load_state_dict({"epoch": 0, "batches_done": 3, "global_batch_rows": 8})  # e.g. 1 rank x 8
    assert len(list(loader.batch_sampler)) == len(loader.batch_sampler) - 3
    with pytest.raises(DataError, match="global batches of 16 rows, this run makes 8"):
        loader.load_state_dict({"epoch": 0, "batches_done": 3, "global_batch_rows": 16})
