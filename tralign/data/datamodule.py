"""The LightningDataModule: canonical rows → tokenised examples → batches.

Rows are loaded and tokenised in ``__init__``-time ``prepare`` (cheap for the sources here and
needed before the model is built, so bad data fails before expensive work starts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from tralign.data.collate import PairCollator, SFTCollator
from tralign.data.sources import Row, Split, load_split
from tralign.data.tokenize import Lengths, encode_row

Mode = Literal["pair", "sft"]


class PreferenceDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_cfg: Mapping[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        *,
        mode: Mode = "pair",
        seed: int = 0,
        split: Split | None = None,
    ):
        super().__init__()
        self.cfg = data_cfg
        self.tokenizer = tokenizer
        self.mode = mode
        self.seed = seed
        self.lengths = Lengths(int(data_cfg["max_length"]), int(data_cfg["max_prompt_length"]))
        self.split = split if split is not None else load_split(data_cfg)
        self.train_examples, n_trunc_train = self._encode(self.split.train)
        self.val_examples, n_trunc_val = self._encode(self.split.val)
        self.stats = {
            "data/train_rows": len(self.train_examples),
            "data/val_rows": len(self.val_examples),
            "data/train_truncated": n_trunc_train,
            "data/val_truncated": n_trunc_val,
        }
        pad_id = tokenizer.pad_token_id
        self.collate = PairCollator(pad_id) if mode == "pair" else SFTCollator(pad_id)

    def _encode(self, rows: list[Row]) -> tuple[list[dict[str, list[int]]], int]:
        examples, truncated = [], 0
        for row in rows:
            example, was_truncated = encode_row(self.tokenizer, row, self.lengths, mode=self.mode)
            examples.append(example)
            truncated += was_truncated
        return examples, truncated

    @property
    def val_prompts(self) -> list[str]:
        return [row["prompt"] for row in self.split.val]

    def train_dataloader(self) -> DataLoader:
        # A seeded generator makes the shuffle order a function of the run's seed alone.
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_examples,
            batch_size=int(self.cfg["batch_size"]),
            shuffle=True,
            generator=generator,
            collate_fn=self.collate,
            num_workers=int(self.cfg.get("num_workers", 0)),
            # Full batches keep per-step statistics (KTO's batch KL estimate) comparable.
            drop_last=len(self.train_examples) > int(self.cfg["batch_size"]),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_examples,
            batch_size=int(self.cfg["eval_batch_size"]),
            shuffle=False,
            collate_fn=self.collate,
            num_workers=int(self.cfg.get("num_workers", 0)),
        )
