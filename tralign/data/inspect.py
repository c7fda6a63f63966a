"""Look at a data config without training: ``python -m tralign.data.inspect [data=NAME data.path=...]``.

Composes the same ``conf/train.yaml`` as training (every data config and override works, and the
method decides pair/SFT/unpaired exactly as in training), reads and tokenises the data (through
the tokenised-data cache), builds no model, and prints: rows per split, rows the source dropped
(``data.on_bad_rows=skip``), truncated and dropped rows after tokenisation, token-length
percentiles before truncation, and the share of padding in one epoch of training batches with and
without length grouping. Bad input: one line on stderr, exit code 2, as ``tralign.train`` does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import hydra
import numpy as np
from omegaconf import DictConfig

from tralign.cli import CONF
from tralign.config import data_mode, validate
from tralign.errors import TralignError, exit_on_user_error

PERCENTILES = (50, 90, 99)
# Inspecting writes nothing: no run folder, no .hydra/, no log file (unless asked on the command line).
QUIET = {
    "hydra.run.dir": ".",
    "hydra.output_subdir": "null",
    "hydra/job_logging": "none",
    "hydra/hydra_logging": "none",
}


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Columns: the first left-aligned, the others right-aligned."""
    cells = [[str(c) for c in row] for row in (header, *rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        aligned = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(aligned))
    return lines


def _percentiles(values: Sequence[int]) -> list[int]:
    if not len(values):
        return [0] * (len(PERCENTILES) + 1)
    array = np.asarray(values)
    return [int(np.percentile(array, q, method="nearest")) for q in PERCENTILES] + [int(array.max())]


def report(cfg: DictConfig) -> str:
    """The inspection report for a composed config (validated first, like a training run)."""
    validate(cfg)
    from tralign.data.datamodule import PreferenceDataModule, row_lengths
    from tralign.data.sampler import padding_fraction
    from tralign.models import build_tokenizer

    mode = data_mode(cfg)
    tokenizer = build_tokenizer(cfg.model, cfg.data)
    data = PreferenceDataModule(cfg.data, tokenizer, mode=mode, seed=int(cfg.seed))
    split, stats, lengths = data.split, data.stats, data.lengths
    lines = [
        f"data={cfg.data.name}: {getattr(split, 'kind', 'pair')} rows, tokenised for method={cfg.method.name} "
        f"({mode}); tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}; "
        f"max_length {lengths.max_length}, max_prompt_length {lengths.max_prompt_length}",
        f"rows dropped by the source (data.on_bad_rows=skip): {getattr(split, 'n_bad', 0)}",
    ]
    lines += [f"  {place}" for place in getattr(split, "bad_rows", [])[:5]]
    lines += _table(
        ["split", "rows", "truncated", "dropped after tokenising"],
        [
            [name, stats[f"data/{name}_rows"], stats[f"data/{name}_truncated"], stats[f"data/{name}_dropped"]]
            for name in ("train", "val")
        ],
    )
    if mode == "unpaired":
        labels = data.tables["train"]["label"]
        lines.append(f"train labels: {sum(labels)} desirable, {len(labels) - sum(labels)} undesirable")
    for name in ("train", "val"):
        table = data.tables[name]
        raw = [c for c in table.column_names if c.startswith("raw_")]
        lines.append(f"{name} token lengths before truncation (completions without EOS):")
        lines += _table(
            ["", *(f"p{q}" for q in PERCENTILES), "max"],
            [[c.removeprefix("raw_"), *_percentiles(table[c])] for c in raw]
            + [["in a batch (after truncation)", *_percentiles(table["length"])]],
        )
    per_example = row_lengths(data.tables["train"], mode)
    fractions = {
        grouped: padding_fraction(
            data.train_batch_sampler(group_by_length=grouped).global_batches(), per_example
        )
        for grouped in (False, True)
    }
    lines.append(
        f"padding in one epoch of training batches (batch_size {cfg.data.batch_size}, share of positions): "
        f"{fractions[False]:.3f} random batches, {fractions[True]:.3f} length-grouped "
        f"(data.group_by_length={data.group_by_length})"
    )
    for name in ("train", "val"):
        lines.append(f"tokenised {name} data: {data.cache[name] or 'not cached (data.cache is off)'}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        print(report(cfg))
    except TralignError as err:
        exit_on_user_error(err)


if __name__ == "__main__":
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in sys.argv[1:]}
    sys.argv += [f"{key}={value}" for key, value in QUIET.items() if key not in given]
    main()
