"""How cost grows: tokens/s and peak memory of each framework against max_length x pairs per step.

``python -m tralign.bench.scaling [models=A,B] [lengths=256,512,1024] [batches=2,8] [timeout=S]
[out=DIR] [bench overrides: steps=2 warmup=1 frameworks=[tralign,trl] ...]``

One invocation per model preset (models saved once, random init), then per cell (max_length,
pairs per step; the prompt cap is half the length) each framework in its own worker process, the
order alternating from cell to cell. Each worker runs under ``timeout`` seconds; a framework that
runs past it in a cell is marked ``timeout`` there and skipped in every larger cell (longer or
wider), so the grid's cost stays bounded on a small machine. No loss pre-check (``python -m
tralign.bench`` does it) and no matmul peak. Writes ``scaling.json``, ``scaling.md`` (the table) and
``scaling.png`` (matplotlib, Agg) into ``out``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KEYS = {"models", "lengths", "batches", "timeout", "out"}


def parse(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """This script's keys, and the rest as bench overrides (key=value)."""
    own, rest = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise SystemExit(f"tralign.bench.scaling: expected key=value, got {arg!r}")
        if key in KEYS:
            own[key] = value
        else:
            rest.append(arg)
    return own, rest


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def dominated(cell: tuple[int, int], failed: set[tuple[int, int]]) -> bool:
    """A cell at least as long and as wide as one that already timed out."""
    return any(cell[0] >= f[0] and cell[1] >= f[1] for f in failed)


def run_model(preset: str, lengths, batches, timeout: float, overrides: list[str], log=print) -> list[dict]:
    from hydra import compose, initialize_config_dir

    from tralign.bench import __main__ as bench
    from tralign.bench.report import summarize

    with initialize_config_dir(config_dir=str(Path(bench.__file__).parent / "conf"), version_base="1.3"):
        base = compose(
            "bench",
            overrides=[
                f"model={preset}",
                "steps=2",
                "warmup=1",
                "repeats=1",
                "ref_update_calls=2",
                "check_loss=false",
                "measure_peak=false",
                "frameworks=[tralign,trl]",
                *overrides,
            ],
        )
    cells = []
    failed: dict[str, set[tuple[int, int]]] = {name: set() for name in base.frameworks}
    with tempfile.TemporaryDirectory(prefix="tralign-scaling-") as tmp:
        work = Path(tmp)
        data, tokenizer = bench._data_cfg(base)
        info = bench._save_models(base, data, tokenizer, work)
        index = 0
        for length in lengths:
            for batch in batches:
                cfg = base.copy()
                cfg.max_length, cfg.max_prompt_length, cfg.batch_size = length, length // 2, batch
                data, _ = bench._data_cfg(cfg)
                spec = bench.make_spec(cfg, work, data, tokenizer, bench_device(cfg), bench_precision(cfg))
                spec["model_config"] = info["config"]
                spec_path = work / f"spec-{length}-{batch}.json"
                spec_path.write_text(json.dumps(spec))
                names = list(cfg.frameworks)
                order = names if index % 2 == 0 else names[::-1]
                index += 1
                cell: dict[str, Any] = {"model": preset, "max_length": length, "pairs": batch, "results": {}}
                for name in order:
                    if dominated((length, batch), failed[name]):
                        cell["results"][name] = {"status": "skipped"}
                        continue
                    start = time.perf_counter()
                    try:
                        result = bench._worker(spec_path, name, work, timeout=timeout)
                    except bench.WorkerTimeout:
                        failed[name].add((length, batch))
                        cell["results"][name] = {"status": "timeout"}
                        log(f"{preset} T={length} B={batch} {name}: timeout ({timeout:.0f} s)")
                        continue
                    s = summarize([result])
                    cell["results"][name] = {
                        "status": "ok",
                        "tokens_per_s": s["tokens_per_s"],
                        "peak_mb": s.get("peak_cuda_mb", s["peak_rss_mb"]),
                        "wall_s": time.perf_counter() - start,
                    }
                    log(f"{preset} T={length} B={batch} {name}: {s['tokens_per_s']:.0f} tokens/s")
                cells.append(cell)
    return cells


def bench_device(cfg) -> str:
    return str(cfg.device)


def bench_precision(cfg) -> str:
    precision = str(cfg.precision)
    return ("bf16" if cfg.device == "cuda" else "fp32") if precision == "auto" else precision


def _cell_text(r: dict[str, Any] | None, key: str, fmt: str) -> str:
    if r is None:
        return "-"
    return fmt.format(r[key]) if r["status"] == "ok" else r["status"]


def markdown_table(cells: Sequence[dict[str, Any]], frameworks: Sequence[str] = ("tralign", "trl")) -> str:
    """One row per (model, max_length, pairs): tokens/s and peak memory per framework, the ratio."""
    head = ["model", "max_length", "pairs/step"]
    head += [f"{f} tokens/s" for f in frameworks] + [f"{frameworks[0]}/{f}" for f in frameworks[1:]]
    head += [f"{f} peak MiB" for f in frameworks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        res = c["results"]
        row = [c["model"], str(c["max_length"]), str(c["pairs"])]
        row += [_cell_text(res.get(f), "tokens_per_s", "{:.0f}") for f in frameworks]
        first = res.get(frameworks[0])
        for f in frameworks[1:]:
            other = res.get(f)
            both = first and other and first["status"] == other["status"] == "ok"
            row.append(f"{first['tokens_per_s'] / other['tokens_per_s']:.2f}" if both else "-")
        row += [_cell_text(res.get(f), "peak_mb", "{:.0f}") for f in frameworks]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(cells: Sequence[dict[str, Any]], path: Path, frameworks: Sequence[str] = ("tralign", "trl")) -> None:
    """tokens/s (top) and peak memory (bottom) against max_length, one column per model, one line
    per framework and pairs per step (timed-out cells left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(c["model"] for c in cells))
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 7), squeeze=False)
    styles = {f: s for f, s in zip(frameworks, ("-o", "--s", ":^"), strict=False)}
    for col, model in enumerate(models):
        mine = [c for c in cells if c["model"] == model]
        for f in frameworks:
            for pairs in sorted({c["pairs"] for c in mine}):
                pts = [
                    (c["max_length"], c["results"][f])
                    for c in mine
                    if c["pairs"] == pairs and c["results"].get(f, {}).get("status") == "ok"
                ]
                if not pts:
                    continue
                xs = [x for x, _ in pts]
                for row, key in ((0, "tokens_per_s"), (1, "peak_mb")):
                    axes[row][col].plot(xs, [r[key] for _, r in pts], styles[f], label=f"{f}, {pairs} pairs")
        axes[0][col].set_title(model)
        axes[0][col].set_ylabel("tokens/s")
        axes[1][col].set_ylabel("peak memory MiB")
        for row in (0, 1):
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].set_xlabel("max_length")
            axes[row][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    own, overrides = parse(argv)
    models = own.get("models", "pythia-14m-arch,pythia-160m-arch").split(",")
    lengths, batches = _ints(own.get("lengths", "256,512,1024")), _ints(own.get("batches", "2,8"))
    timeout = float(own.get("timeout", 300))
    out = Path(own.get("out", f"outputs/scaling/{time.strftime('%Y-%m-%d_%H-%M-%S')}"))
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for preset in models:
        cells += run_model(preset, lengths, batches, timeout, overrides)
        (out / "scaling.json").write_text(
            json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "cells": cells})
        )
    (out / "scaling.md").write_text(markdown_table(cells) + "\n")
    plot(cells, out / "scaling.png")
    print(markdown_table(cells))
    print(f"written: {out}/scaling.{{json,md,png}}")


if __name__ == "__main__":
    main(sys.argv[1:])
