"""Jobs -> rows (one per job, the swept values first, the best job of each method marked) -> CSV and
Markdown. Pure functions over plain dicts; plots.py draws from the same rows."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tralign.report.cells import KL_KEY, _md_table, fmt, number  # noqa: F401  (KL_KEY re-exported)
from tralign.report.jobs import Job, parse_value
from tralign.report.meaning import metric_kind, reference_equals_policy
from tralign.report.seed_tables import seed_sections

# Columns every row has (when the summary has them), in this order, after the swept values.
RUN_COLUMNS = (
    "method",
    "ref_update",
    "alpha",
    "tau",
    "beta",
    "seed",
    "global_batch_size",
    "global_step",
    "ref_updates",
)
# The quality metric used to mark the best job and for the plots, first present wins; --metric overrides.
METRIC_PREFERENCE = ("golden_reward", "val/init/rewards/accuracies", "val/rewards/accuracies", "val/loss")
# Columns of the Markdown table besides the swept values (the CSV has everything): those that keep their
# meaning under a moving reference first, the reference-relative ones after (tralign/report/meaning.py).
MD_METRICS = (
    "golden_reward",
    "golden_kl_init",
    "val/init/rewards/accuracies",
    "val/rewards/accuracies",
    "val/loss",
)
FAMILIES = {"dpo": "DPO", "ipo": "IPO", "kto_pair": "KTO", "kto": "KTO", "sft": "SFT"}


def method_label(loss: str, ref_update: str) -> str:
    """What the paper compares: ``DPO`` (frozen reference), ``TR-DPO soft``, ``TR-DPO hard`` ... ``loss``
    may also be a method name (``tr_dpo``) when a job has no summary."""
    base = loss.removeprefix("tr_")
    family = FAMILIES.get(base, base.upper())
    if family == "SFT" or (ref_update in ("none", "") and not loss.startswith("tr_")):
        return family
    return f"TR-{family} {ref_update}".rstrip()


def higher_is_better(metric: str) -> bool:
    return "loss" not in metric and not metric.endswith("kl_init")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), inner, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Command-line keys whose value differs between jobs, in command-line order."""
    keys: dict[str, None] = {}
    for job in jobs:
        keys.update(dict.fromkeys(job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def column_name(override_key: str) -> str:
    return override_key.lstrip("+~")


def job_row(job: Job, swept: Sequence[str]) -> dict[str, Any]:
    """One flat row: job, status, swept values, method label, run fields, metrics (``train/*``,
    ``val/*``, ``golden_*``, ``eval/*``), error, job_dir."""
    s = job.summary
    row: dict[str, Any] = {"job": job.id, "status": job.status}
    for key in swept:
        name = column_name(key)
        value = s.get(name) if name in s and not isinstance(s.get(name), Mapping) else None
        if value is None and key in job.overrides:
            value = parse_value(job.overrides[key])
        row[name] = value
    loss = s.get("loss") or job.overrides.get("method", "")
    row["label"] = method_label(str(loss), str(s.get("ref_update") or job.overrides.get("ref_update", "")))
    row["best"] = False
    for key in RUN_COLUMNS:
        row.setdefault(key, s.get(key))
    # The closing validation compared the policy with itself: its reference-relative values are empty.
    row["ref_equals_policy"] = reference_equals_policy(s) if s else None
    # The quality metrics first (golden reward, evaluation), then validation, training, wall time.
    metrics: dict[str, Any] = {k: v for k, v in s.items() if k.startswith("golden_")}
    _flatten("eval", job.eval, metrics)
    for part in ("val", "train"):
        if isinstance(s.get(part), Mapping):
            _flatten("", s[part], metrics)
    metrics["wall_time_s"] = s.get("wall_time_s")
    row.update({k: v for k, v in metrics.items() if k not in row})
    row["error"] = job.error
    row["job_dir"] = str(job.dir) if job.dir else ""
    return row


def pick_metric(rows: Sequence[Mapping[str, Any]], requested: str | None = None) -> str | None:
    if requested:
        return requested
    done = [r for r in rows if r["status"] == "completed"]
    return next((m for m in METRIC_PREFERENCE if any(number(r.get(m)) is not None for r in done)), None)


def mark_best(rows: list[dict[str, Any]], metric: str | None) -> None:
    """``best`` = True on the completed job with the best ``metric`` within each method label."""
    if metric is None:
        return
    for row in rows:
        row["best"] = False
    sign = 1.0 if higher_is_better(metric) else -1.0
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        value = number(row.get(metric))
        if row["status"] != "completed" or value is None or is_empty(row, metric):
            continue
        current = best.get(row["label"])
        if current is None or sign * value > sign * current[metric]:
            best[row["label"]] = row
    for row in best.values():
        row["best"] = True


def is_empty(row: Mapping[str, Any], metric: str) -> bool:
    """A reference-relative validation value taken when the reference equals the policy."""
    return (
        bool(row.get("ref_equals_policy"))
        and metric_kind(metric) == "reference"
        and metric.startswith("val/")
    )


def header_name(metric: str) -> str:
    """Reference-relative columns say so: ``val/loss (vs ref)``."""
    return f"{metric} (vs ref)" if metric_kind(metric) == "reference" else metric


def build_rows(
    jobs: Sequence[Job], metric: str | None = None
) -> tuple[list[dict[str, Any]], list[str], str | None]:
    """Rows, the swept column names and the metric used to pick the best job per method."""
    swept = swept_keys(jobs)
    rows = [job_row(job, swept) for job in jobs]
    metric = pick_metric(rows, metric)
    mark_best(rows, metric)
    return rows, [column_name(k) for k in swept], metric


def columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """All keys in first-seen order, except error and job_dir last."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    tail = [k for k in ("error", "job_dir") if k in seen]
    return [k for k in seen if k not in tail] + tail


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Full precision (Python's shortest round-trip repr), empty cell for a missing value."""
    cols = columns(rows)
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in cols})


def markdown(
    rows: Sequence[Mapping[str, Any]],
    swept: Sequence[str],
    metric: str | None,
    title: str,
    baselines: Mapping[str, str] | None = None,
) -> str:
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "incomplete", "not started")
    }
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
    ]
    if metric:
        direction = "highest" if higher_is_better(metric) else "lowest"
        lines.append(f"★ marks the best completed job of each method by `{metric}` ({direction}).")
    present = [m for m in MD_METRICS if any(r.get(m) is not None for r in rows)]
    if metric and metric not in present:
        present.insert(0, metric)
    header = [
        "job",
        "status",
        *swept,
        "variant" if "method" in swept else "method",
        *map(header_name, present),
    ]
    body = []
    for r in rows:
        cells = [fmt(r["job"]), r["status"], *(fmt(r.get(k)) for k in swept), r["label"]]
        for m in present:
            if is_empty(r, m) and r.get(m) is not None:
                cells.append("— (ref = policy)")
                continue
            text = fmt(r.get(m), "#.4g")
            sem = r.get(f"{m}_sem")
            text += f" ± {sem:.2g}" if text and isinstance(sem, float) else ""
            cells.append(f"**{text}**" if r["best"] and m == metric and text else text)
        body.append([*cells, fmt(r["best"])])
    lines += ["", *_md_table([*header, "best"], body)]
    if any(r.get("ref_equals_policy") for r in rows):
        lines += [
            "",
            "`(vs ref)`: relative to the reference at the end of the run. `— (ref = policy)`: the last optimizer "
            "step copied the policy into the reference (hard update), so the closing validation compared the "
            "policy with itself (accuracy 0, loss ln 2 by construction): no result.",
        ]
    lines += seed_sections(rows, swept, metric, baselines)
    bad = [r for r in rows if r["status"] != "completed"]
    if bad:
        lines += ["", "## Failed or incomplete jobs", ""]
        lines += [f"- job {r['job']} ({r['status']}): {fmt(r.get('error'))}" for r in bad]
    return "\n".join(lines) + "\n"
