"""Length-grouped training batches: little padding, random contents and order, one share per rank.

One epoch, deterministic in (seed, epoch) and independent of how many ranks share it:

1. a seeded random permutation of the examples (:class:`EpochPermutation`);
2. cut to a whole number of *global* batches (the rows of one optimizer step: ``batch_size`` rows
   for each of W ranks and each of A accumulated micro-batches); the few rows left over differ
   every epoch;
3. with grouping, split into mega-batches of ``mega_batch`` global batches, sort each by length
   (longest first) and cut it into global batches: neighbours in a sorted mega-batch have similar
   lengths, so a batch pads little, while which rows meet in a mega-batch stays random;
4. shuffle the batch order (lengths must not drift through the epoch); with grouping, the global
   batch holding the longest row goes first, so an out-of-memory shows at step 0;
5. micro-step a of A takes the a-th slice of W x ``batch_size`` rows of its global batch, and rank
   r of W takes rows r, r + W, r + 2W, ... of that slice: disjoint shares of equal size, so every
   rank runs the same number of steps (per-step collectives such as KTO's all-gathered KL need
   that), and a similar mix of lengths on every rank.

Because the global batches depend only on (seed, epoch, global batch G = batch_size × A × W), every
cut of the same G (tralign/data/batch_plan.py) trains on exactly the same rows, step for step: one
process with 4 rows × 2 micro-batches and two processes with 4 rows each alike (tests/test_scale.py
compares the resulting models).

Resuming mid-epoch: :meth:`LengthGroupedBatchSampler.resume_at` makes the next iteration skip the
batches a checkpointed run had already trained on (see ``ResumableDataLoader`` in datamodule.py).

Lightning only calls ``set_epoch`` on a DataLoader's ``sampler`` and on its
``batch_sampler.sampler``, never on the batch sampler itself; the epoch therefore lives in the
batch sampler's ``sampler`` (an :class:`EpochPermutation`). Lightning also cannot re-shard a
custom batch sampler (with ``Trainer(use_distributed_sampler=True)`` under DDP it raises), so this
sampler shards itself and the trainer config sets ``use_distributed_sampler: false``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

MEGA_BATCH = 50  # batches per sorted mega-batch (Hugging Face's LengthGroupedSampler uses 50 too)
_EPOCH_STRIDE = 1_000_003  # seed * stride + epoch: distinct generators for distinct (seed, epoch)


class EpochPermutation(Sampler[int]):
    """A random permutation of ``range(n)`` that is a function of (seed, epoch) alone."""

    def __init__(self, n: int, seed: int = 0):
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + self.epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator()).tolist())

    def __len__(self) -> int:
        return self.n


def _dist_defaults() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of example indices for one rank (see the module docstring for the recipe).

    ``lengths[i]`` is the grouping key of example i (its longest sequence in a batch).
    ``group_by_length=False`` gives plain shuffled batches with the same sharding. ``num_replicas``
    and ``rank`` default to ``torch.distributed``'s when it is initialised, else 1 and 0.
    ``accumulate`` micro-batches make one optimizer step: it yields A micro-batches of
    ``batch_size`` rows per global batch, and ``len()`` counts micro-batches. With fewer rows than
    one full global batch, the micro-batch shrinks to ``len(lengths) // (num_replicas * accumulate)``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        group_by_length: bool = True,
        mega_batch: int = MEGA_BATCH,
        num_replicas: int | None = None,
        rank: int | None = None,
        accumulate: int = 1,
    ):
        if batch_size < 1 or mega_batch < 1 or accumulate < 1:
            raise ValueError(
                f"batch_size, mega_batch and accumulate must be >= 1, got {batch_size}, {mega_batch}, {accumulate}"
            )
        world, own = _dist_defaults()
        self.num_replicas = world if num_replicas is None else num_replicas
        self.rank = own if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        if len(lengths) < self.num_replicas:
            raise ValueError(f"{len(lengths)} training row(s) cannot be shared by {self.num_replicas} ranks")
        self.lengths = list(lengths)
        self.accumulate = accumulate
        self.rows_per_batch = min(batch_size, len(self.lengths) // (self.num_replicas * accumulate))
        if self.rows_per_batch < 1:
            raise ValueError(
                f"{len(self.lengths)} training row(s) cannot fill {accumulate} micro-batch(es) on each of "
                f"{self.num_replicas} ranks"
            )
        self.group_by_length = group_by_length
        self.mega_batch = mega_batch
        # Named `sampler` on purpose: Lightning's epoch hook reaches `batch_sampler.sampler.set_epoch`.
        self.sampler = EpochPermutation(len(self.lengths), seed)
        self._resume: tuple[int | None, int] = (None, 0)  # (epoch, batches to skip), see resume_at

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration over ``epoch`` start after its first ``batches_done`` batches."""
        self._resume = (epoch, batches_done)

    @property
    def global_batch_rows(self) -> int:
        """Rows per optimizer step, all ranks and micro-batches together."""
        return self.rows_per_batch * self.num_replicas * self.accumulate

    def __len__(self) -> int:
        """Micro-batches per rank per epoch (Lightning's batch count)."""
        return len(self.lengths) // self.global_batch_rows * self.accumulate

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (one optimizer step's rows each), in training order."""
        size = self.global_batch_rows
        steps = len(self.lengths) // size
        generator = self.sampler.generator()
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        order = order[: steps * size]
        if self.group_by_length:
            chunk = self.mega_batch * size  # a multiple of size, so every batch below is full
            mega = [order[i : i + chunk] for i in range(0, len(order), chunk)]
            # Stable sort: rows of equal length keep their random order.
            order = [i for m in mega for i in sorted(m, key=lambda i: -self.lengths[i])]
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        batches = [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]
        if self.group_by_length and batches:
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            batches.insert(0, batches.pop(longest))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        micro = self.rows_per_batch * self.num_replicas  # one micro-step's rows, all ranks
        mine = [
            batch[a * micro : (a + 1) * micro][self.rank :: self.num_replicas]
            for batch in self.global_batches()
            for a in range(self.accumulate)
        ]
        epoch, done = self._resume
        self._resume = (None, 0)  # one-shot: later epochs start at their beginning
        if epoch == self.epoch:
            mine = mine[done:]
        return iter(mine)


def padding_fraction(batches: Sequence[Sequence[int]], row_lengths: Sequence[Sequence[int]]) -> float:
    """Share of the positions in these batches that are padding, as the collators pad them.

    ``row_lengths[i]`` lists the sequence lengths example i puts in a batch (a pair: prompt +
    chosen and prompt + rejected); each batch is padded to its longest sequence. Token-weighted
    over all batches: the share of the epoch's compute spent on padding.
    """
    positions = real = 0
    for batch in batches:
        rows = [n for i in batch for n in row_lengths[i]]
        positions += max(rows) * len(rows)
        real += sum(rows)
    return 1.0 - real / positions if positions else 0.0
