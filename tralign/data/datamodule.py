"""The LightningDataModule: canonical rows → tokenised examples (Arrow, cached) → batches.

Rows are loaded and tokenised in ``__init__`` (needed before the model is built, so bad data fails
before expensive work starts). Training batches are length-grouped by default
(``data.group_by_length``, see ``tralign.data.sampler``); validation batches keep row order.
Rows that cannot train once tokenised (a completion with no tokens, a pair made identical by
truncation) are refused, every location listed, or dropped and counted with
``data.on_bad_rows=skip``; a split left without rows is refused (no validation rows would end a
finished run in an error).

Distributed: the training sampler shards itself and validation uses a ``DistributedSampler`` built
here, so the trainer runs with ``use_distributed_sampler: false`` (conf/trainer/default.yaml).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import pyarrow.compute as pc
from datasets import Dataset
from torch.utils.data import DataLoader, DistributedSampler
from transformers import PreTrainedTokenizerBase

from tralign.data.cache import cache_dir_for, encode_table
from tralign.data.collate import PairCollator, SFTCollator, UnpairedCollator
from tralign.data.sampler import LengthGroupedBatchSampler
from tralign.data.sources import Split, load_split
from tralign.data.tokenize import Lengths, Mode, example_fields
from tralign.errors import DataError

log = logging.getLogger("tralign")

MAX_REPORTED_PROBLEMS = 20
# The row kinds (Split.kind) each mode trains on; SFT also takes a pair's chosen answer.
ACCEPTS: dict[Mode, tuple[str, ...]] = {"pair": ("pair",), "sft": ("sft", "pair"), "unpaired": ("unpaired",)}


class Examples(Sequence[dict[str, Any]]):
    """Encoded examples in an Arrow table, indexed like a list of dicts (slices too).

    Arrow keeps large sets memory-mapped and compact (int32), where lists of Python ints would cost
    tens of bytes per token in every process.
    """

    def __init__(self, table: Dataset, fields: Sequence[str]):
        self.table = table.select_columns(list(fields))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index):  # int -> dict, slice -> list of dicts
        if isinstance(index, slice):
            return self.__getitems__(list(range(len(self)))[index])
        return self.table[index]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # DataLoader fetches a whole batch with one call when the dataset has this method.
        return self.table.__getitems__(indices)


def row_lengths(table: Dataset, mode: Mode) -> np.ndarray:
    """(N, k) lengths of the k sequences each example puts in a batch (a pair: k = 2)."""
    columns = table.select_columns(list(example_fields(mode))).with_format("arrow")[:]
    prompt = pc.list_value_length(columns["prompt_ids"]).to_numpy()
    sides = [f for f in example_fields(mode) if f.endswith("_ids") and f != "prompt_ids"]
    return np.stack([prompt + pc.list_value_length(columns[f]).to_numpy() for f in sides], axis=1)


def _prompt_start(row: Mapping[str, Any], chars: int = 40) -> str:
    """The start of a row's prompt, escaped to one line: finds a row of the split in the file."""
    prompt = str(row.get("prompt", ""))
    return repr(prompt[:chars]) + ("..." if len(prompt) > chars else "")


def _drop_bad_rows(
    tables: dict[str, Dataset], on_bad_rows: str, rows: Mapping[str, Sequence[Mapping[str, Any]]]
) -> tuple[dict[str, Dataset], dict[str, int]]:
    """Refuse (``error``) or drop (``skip``) rows whose encoding has a problem; all listed at once,
    each as ``SPLIT row I: REASON (prompt '...')`` (I counts the rows of that split, not file lines)."""
    reasons = {name: t["problem"] for name, t in tables.items()}
    bad = {name: [i for i, reason in enumerate(column) if reason] for name, column in reasons.items()}
    problems = [
        f"{name} row {i}: {reasons[name][i]} (prompt {_prompt_start(rows[name][i])})"
        for name, indices in bad.items()
        for i in indices
    ]
    if not problems:
        return tables, {name: 0 for name in tables}
    shown = problems[:MAX_REPORTED_PROBLEMS]
    more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
    listing = "; ".join(shown) + more
    if on_bad_rows == "error":
        raise DataError(
            f"{len(problems)} row(s) cannot train after tokenisation: {listing} "
            "(data.on_bad_rows=skip drops them)"
        )
    log.warning(
        "data.on_bad_rows=%s: dropped %d row(s) after tokenisation: %s", on_bad_rows, len(problems), listing
    )
    kept = {}
    for name, t in tables.items():
        drop = set(bad[name])
        kept[name] = t.select([i for i in range(len(t)) if i not in drop]) if drop else t
    for name in ("train", "val"):  # no validation rows: Lightning would skip validation, train.py fail
        if name in kept and len(kept[name]) == 0:
            what = "training" if name == "train" else "validation"
            raise DataError(f"no {what} rows left after dropping {len(bad[name])} bad row(s): {listing}")
    return kept, {name: len(rows) for name, rows in bad.items()}


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning checkpoints.

    Lightning stores ``state_dict()`` of every training loader that has one and hands it back to
    ``load_state_dict`` on resume, before iterating. The position is Lightning's count of finished
    batches (``batches_done``), not the count this iterator produced: Lightning fetches one batch
    ahead, and worker processes prefetch more. On resume the batch sampler skips that many batches
    of the saved epoch: the order is a function of (seed, epoch), so the resumed run trains on the
    very batches the interrupted one would have.
    """

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        sampler = self.batch_sampler
        return {
            "epoch": int(sampler.epoch),
            "batches_done": self._batches_done(),
            "global_batch_rows": sampler.global_batch_rows,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        # Global batches depend on (seed, epoch, rows per global batch) only: a run may resume on
        # another number of ranks, but not with another global batch (it would skip or repeat rows).
        saved, now = state.get("global_batch_rows"), self.batch_sampler.global_batch_rows
        if saved is not None and int(saved) != now:
            raise DataError(
                f"ckpt_path: the checkpoint was trained on global batches of {saved} rows, this run makes "
                f"{now} (data.global_batch_size); resume with the same global batch"
            )
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self.batch_sampler):  # saved after an epoch's last batch: the next one is due
            epoch, done = epoch + 1, 0
        # Lightning creates the resumed epoch's iterator before its set_epoch call: set it here.
        self.batch_sampler.set_epoch(epoch)
        self.batch_sampler.resume_at(epoch, done)


class PreferenceDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_cfg: Mapping[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        *,
        mode: Mode = "pair",
        seed: int = 0,
        split: Split | None = None,
        micro_batch: int | None = None,
        accumulate: int = 1,
    ):
        super().__init__()
        self.cfg = data_cfg
        # The cut of the global batch (tralign/data/batch_plan.py): rows per device per micro-batch
        # (default data.batch_size) and micro-batches per optimizer step.
        self.micro_batch = int(data_cfg["batch_size"]) if micro_batch is None else int(micro_batch)
        self.accumulate = int(accumulate)
        self.tokenizer = tokenizer
        self.mode = mode
        self.seed = seed
        self.lengths = Lengths(int(data_cfg["max_length"]), int(data_cfg["max_prompt_length"]))
        self.group_by_length = bool(data_cfg.get("group_by_length", True))
        self.split = split if split is not None else load_split(data_cfg, tokenizer)
        kind = getattr(self.split, "kind", "pair")
        if kind not in ACCEPTS[mode]:
            raise DataError(
                f"data={data_cfg.get('name')} gives {kind} rows, but this method trains on {mode} data "
                f"({' or '.join(ACCEPTS[mode])} rows)"
            )
        cache_dir = cache_dir_for(data_cfg)
        tables: dict[str, Dataset] = {}
        self.cache: dict[str, str | None] = {}  # per split: None (not cached), "hit: PATH", "written: PATH"
        for name, rows in (("train", self.split.train), ("val", self.split.val)):
            tables[name], self.cache[name] = encode_table(
                rows, tokenizer, self.lengths, mode, cache_dir=cache_dir
            )
        self.tables, dropped = _drop_bad_rows(
            tables,
            str(data_cfg.get("on_bad_rows", "error")),
            {"train": self.split.train, "val": self.split.val},
        )
        fields = example_fields(mode)
        self.train_examples = Examples(self.tables["train"], fields)
        self.val_examples = Examples(self.tables["val"], fields)
        self.train_lengths: list[int] = self.tables["train"]["length"]
        self.stats = {
            "data/train_rows": len(self.train_examples),
            "data/val_rows": len(self.val_examples),
            "data/train_truncated": sum(self.tables["train"]["truncated"]),
            "data/val_truncated": sum(self.tables["val"]["truncated"]),
            "data/train_dropped": dropped["train"],
            "data/val_dropped": dropped["val"],
            "data/source_bad_rows": getattr(
                self.split, "n_bad", 0
            ),  # dropped by the source (on_bad_rows=skip)
            **{f"data/source_{k}": v for k, v in getattr(self.split, "counts", {}).items()},
        }
        pad_id = tokenizer.pad_token_id
        if mode == "pair":
            self.collate = PairCollator(pad_id)
        elif mode == "unpaired":
            self.collate = UnpairedCollator(pad_id, self.lengths.max_length)
        else:
            self.collate = SFTCollator(pad_id)

    @property
    def val_prompts(self) -> list[str]:
        """Distinct held-out prompts in row order (unpaired rows repeat a prompt per completion)."""
        return list(dict.fromkeys(row["prompt"] for row in self.split.val))

    def _replicas(self) -> dict[str, int]:
        """Data-parallel ``num_replicas``/``rank`` from the trainer's strategy; {} off a parallel strategy."""
        kwargs = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        return dict(kwargs) if kwargs else {}

    def train_batch_sampler(self, *, group_by_length: bool | None = None) -> LengthGroupedBatchSampler:
        return LengthGroupedBatchSampler(
            self.train_lengths,
            self.micro_batch,
            seed=self.seed,
            group_by_length=self.group_by_length if group_by_length is None else group_by_length,
            accumulate=self.accumulate,
            **self._replicas(),
        )

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(
            self.train_examples,
            batch_sampler=self.train_batch_sampler(),
            collate_fn=self.collate,
            num_workers=int(self.cfg.get("num_workers", 0)),
            batches_done=self._batches_done,
        )

    def _batches_done(self) -> int:
        """Training batches of the current epoch this rank has finished (Lightning's own count)."""
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def val_dataloader(self) -> DataLoader:
        replicas = self._replicas()
        sampler = None
        if replicas.get("num_replicas", 1) > 1:
            # Equal shares (it repeats a few rows) keep per-step collectives aligned across ranks.
            sampler = DistributedSampler(self.val_examples, shuffle=False, **replicas)
        return DataLoader(
            self.val_examples,
            batch_size=int(self.cfg["eval_batch_size"]),
            shuffle=False,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=int(self.cfg.get("num_workers", 0)),
        )
