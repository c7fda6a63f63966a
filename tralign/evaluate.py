"""Evaluation entry point: ``python -m tralign.evaluate policy=<run>/policy baseline=<run>/policy [judge=...]``.

Sample every model once on the same held-out prompts with the same seed (cached), judge each
(policy, baseline) comparison, and write ``generations.jsonl``, ``judgments.jsonl`` and
``eval.json`` to the Hydra run directory; print a table; log the same to W&B (``logger=wandb``).
"""

from __future__ import annotations

import itertools
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from tralign.cli import CONF, CallableModule, api_compose, api_run_dir, run_command, user_errors
from tralign.errors import TralignError
from tralign.loggers import finish_wandb

log = logging.getLogger("tralign")


def _paths(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | ListConfig) else [str(value)]


def comparisons_for(policies: list[str], baseline: str | None, pairs: str) -> list[tuple[str, str]]:
    """(policy, baseline) pairs: each policy against ``baseline``, or (pairs=all) every pair of models."""
    if pairs == "all":
        models = list(dict.fromkeys(policies + ([baseline] if baseline else [])))
        return list(itertools.combinations(models, 2))
    if pairs != "baseline":
        raise TralignError(f"pairs: must be baseline or all, got {pairs!r}")
    if not baseline:
        raise TralignError(
            "baseline: required (a <run dir>/policy folder), or pairs=all with several policies"
        )
    pairs_ = [(p, baseline) for p in policies if not _same_folder(p, baseline)]
    if not pairs_:
        # Refused rather than scored as a 0.5 sanity check: a model against itself is most often a
        # pasted path, and its "win rate" would read like a result.
        raise TralignError(
            f"policy and baseline are the same folder ({baseline}): nothing to compare; give the "
            "baseline run's policy folder as baseline=..."
        )
    return pairs_


def _same_folder(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def eval_prompts(data_cfg: Any, n: int, tokenizer: Any) -> list[str]:
    """The first ``n`` distinct prompts of the data's validation rows (held out from training)."""
    from tralign.data.sources import load_split

    prompts = list(dict.fromkeys(row["prompt"] for row in load_split(data_cfg, tokenizer).val))[:n]
    if not prompts:
        raise TralignError(f"data={data_cfg.name}: no validation prompts to evaluate on")
    return prompts


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate; returns eval.json's content (also written to ``run_dir``)."""
    from tralign.eval.judges import build_judge
    from tralign.eval.metrics import mean_ci, win_rate
    from tralign.eval.output import log_wandb, table
    from tralign.eval.samples import cache_root, check_model_dir, generate, kl_log_ratios, stop_markers

    policies, baseline, sft = _paths(cfg.policy), cfg.get("baseline"), cfg.get("sft")
    if not policies:
        raise TralignError("policy: give a <run dir>/policy folder, or a list policy=[a,b]")
    pairs = comparisons_for(policies, None if baseline is None else str(baseline), str(cfg.pairs))
    models = list(dict.fromkeys(m for pair in pairs for m in pair))
    for m in models:
        check_model_dir(m, "policy" if m in policies else "baseline")
    if sft:
        check_model_dir(str(sft), "sft")
    judge = build_judge(cfg.judge, cfg.data)  # a missing key or judge model fails before sampling
    if cfg.judge.get("hc") and not hasattr(judge, "rate"):
        raise TralignError(f"judge.hc=true needs judge=api (absolute ratings), got judge={cfg.judge.name}")
    gen = cfg.generation
    from transformers import AutoTokenizer

    prompts = eval_prompts(cfg.data, int(gen.n_prompts), AutoTokenizer.from_pretrained(models[0]))
    markers = stop_markers(gen, str(cfg.data.name))
    cache = cache_root(cfg.get("cache_dir"))
    rows = {m: generate(m, prompts, gen, markers, cache_dir=cache, device=str(cfg.device)) for m in models}
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "generations.jsonl").open("w", encoding="utf-8") as fh:
        for m in models:
            for i, r in enumerate(rows[m]):
                fh.write(json.dumps({"model": m, "index": i, "prompt": r["prompt"], "completion": r["completion"], "n_tokens": r["n_tokens"]}) + "\n")  # fmt: skip

    def texts(m: str) -> list[str]:
        return [r["completion"] for r in rows[m]]

    boot = {"n_boot": int(cfg.n_boot), "seed": int(cfg.seed)}
    ratings = {m: judge.rate(prompts, texts(m)) for m in models} if cfg.judge.get("hc") else {}
    kl = {}
    if sft:
        for m in policies:
            kl[m] = kl_log_ratios(
                m, str(sft), rows[m], batch_size=int(gen.batch_size), device=str(cfg.device)
            )
    results, samples = [], []
    with (run_dir / "judgments.jsonl").open("w", encoding="utf-8") as fh:
        for p, b in pairs:
            judged = judge.judge_pairs(prompts, texts(p), texts(b))
            c: dict[str, Any] = {"policy": p, "baseline": b, "judge": cfg.judge.name}
            c.update(win_rate([j.outcome for j in judged], **boot))
            c["words_policy"] = statistics.fmean(len(t.split()) for t in texts(p))
            c["words_baseline"] = statistics.fmean(len(t.split()) for t in texts(b))
            c["tokens_policy"] = statistics.fmean(r["n_tokens"] for r in rows[p])
            c["tokens_baseline"] = statistics.fmean(r["n_tokens"] for r in rows[b])
            if cfg.judge.name == "golden":
                c["golden_policy"] = statistics.fmean(j.score_a for j in judged)
                c["golden_baseline"] = statistics.fmean(j.score_b for j in judged)
            if p in kl:
                stats = mean_ci(kl[p], **boot)
                c["kl_sft"], c["kl_sft_sem"] = stats["mean"], stats["sem"]
            for side, m in (("policy", p), ("baseline", b)):
                for name in ratings.get(m, [{}])[0]:
                    stats = mean_ci([r[name] for r in ratings[m]], **boot)
                    c[f"hc_{name}_{side}"], c[f"hc_{name}_{side}_ci"] = (
                        stats["mean"],
                        [stats["ci_low"], stats["ci_high"]],
                    )
                    # Ratings the judge's reply did not give (or gave out of 1-10) are counted, not hidden.
                    c[f"hc_{name}_{side}_unparsable"] = len(ratings[m]) - stats["n"]
            results.append(c)
            for i, j in enumerate(judged):
                fh.write(json.dumps({"policy": p, "baseline": b, "index": i, "prompt": prompts[i], "answer_policy": texts(p)[i], "answer_baseline": texts(b)[i], "outcome": j.outcome, "score_policy": j.score_a, "score_baseline": j.score_b, **j.raw}) + "\n")  # fmt: skip
                if i < int(cfg.n_logged_samples):
                    samples.append({"policy": p, "baseline": b, "prompt": prompts[i], "answer_policy": texts(p)[i], "answer_baseline": texts(b)[i], "outcome": j.outcome})  # fmt: skip
    settings = {k: gen[k] for k in ("n_prompts", "max_new_tokens", "temperature", "top_p", "seed")}
    out = {"judge": cfg.judge.name, "data": cfg.data.name, "n_prompts": len(prompts), "generation": settings, "stop": markers, "sft": sft, "comparisons": results}  # fmt: skip
    (run_dir / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    print(table(results))
    config = OmegaConf.to_container(cfg, resolve=True)  # holds the key's variable NAME only
    log_wandb(cfg.logger, run_dir, config=config, comparisons=results, samples=samples)
    return out


# What a bare ``python -m tralign.evaluate`` is told (checked before Hydra starts).
REQUIRED = {
    "policy": "policy: required: the model folder(s) to evaluate and what to compare them with, e.g. "
    "policy=outputs/<TR-DPO run>/policy baseline=outputs/<DPO run>/policy (see --help)"
}


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    failed = True
    try:
        with user_errors():
            run(cfg, Path(HydraConfig.get().runtime.output_dir))
            failed = False
    finally:
        finish_wandb(failed)


def main() -> None:
    """``python -m tralign.evaluate`` and ``tralign-eval``."""
    run_command(_hydra_main, "evaluate", required=REQUIRED)


def call(overrides: Sequence[str] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare policies, as ``tralign-eval *overrides``; returns ``eval.json``'s content.

    ``run_dir``: default ``outputs/eval/<date>/<time>_<judge>``."""
    cfg = api_compose("evaluate", overrides, REQUIRED)
    folder = Path(run_dir) if run_dir is not None else api_run_dir("outputs/eval", str(cfg.judge.name))
    return run(cfg, folder)


# ``from tralign import evaluate; evaluate(overrides=[...])``: the module itself calls :func:`call`.
sys.modules[__name__].__class__ = CallableModule


if __name__ == "__main__":
    main()
