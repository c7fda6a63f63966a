"""``python -m tralign.bench [key=value ...]`` (tralign/bench/conf/bench.yaml): prepare the model and rows once,
check both frameworks compute the same loss, run each framework in its own process, alternating,
print the table and ``throughput ratio tralign/trl: X.XX`` last, write bench.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tralign.bench.breakdown import breakdown_line, summarize_phases
from tralign.bench.mfu import mfu
from tralign.bench.report import BenchError, check_losses, peak_line, summarize, table
from tralign.errors import exit_on_user_error

REPO = Path(__file__).resolve().parents[2]
CONF = Path(__file__).resolve().parents[1] / "conf"  # the packaged configs (tralign/conf)
SHARED = REPO.parent / "shared"
HH_SAMPLE = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
PYTHIA_TOKENIZER = SHARED / "tokenizers" / "pythia"


def _data_cfg(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """tralign's own data config (conf/data/*.yaml) for the bench's rows, and the tokenizer."""
    kind = cfg.data
    if kind == "auto":
        kind = "hh" if (cfg.data_path or HH_SAMPLE.exists()) else "synthetic"
    data = OmegaConf.to_container(OmegaConf.load(CONF / "data" / f"{kind}.yaml"), resolve=True)
    data.update(
        max_length=int(cfg.max_length),
        max_prompt_length=int(cfg.max_prompt_length),
        batch_size=int(cfg.batch_size),
        num_workers=0,
        cache=False,
        group_by_length=bool(cfg.tralign.group_by_length),
    )
    if kind == "hh":
        data.update(path=str(cfg.data_path or HH_SAMPLE), val_path=None, val_split=None, on_bad_rows="skip")
        tokenizer = str(cfg.tokenizer_path or PYTHIA_TOKENIZER)
    elif kind == "synthetic":
        data["golden_eval"] = None
        tokenizer = str(cfg.tokenizer_path or "synthetic")
    else:
        raise BenchError(f"data={kind}: expected auto, hh or synthetic")
    return data, tokenizer


def _save_models(cfg: DictConfig, data: dict[str, Any], tokenizer_src: str, work: Path) -> dict[str, Any]:
    """The random-init policy (and, for the pre-check only, a second init as reference), saved once."""
    from tralign.bench.presets import model_config
    from tralign.models import build_policy, build_tokenizer

    try:
        arch = model_config(str(cfg.model), OmegaConf.to_container(cfg.model_config, resolve=True))
    except KeyError as err:
        raise BenchError(err.args[0]) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer({"tokenizer": tokenizer_src}, data)
    info = {}
    for name, seed in (("model", int(cfg.init_seed)), ("reference", int(cfg.init_seed) + 1)):
        model = build_policy({"config": arch, "init_seed": seed}, tokenizer)
        model.save_pretrained(work / name, safe_serialization=True)
        info["parameters"] = sum(p.numel() for p in model.parameters())
    info["config"] = {**arch, "vocab_size": model.config.vocab_size}
    return info


def make_spec(
    cfg: DictConfig, work: Path, data: dict[str, Any], tokenizer: str, device: str, precision: str
) -> dict[str, Any]:
    """What every worker of one invocation reads (spec.json): models, rows, settings."""
    return {
        "model_dir": str(work / "model"),
        "reference_dir": str(work / "reference"),
        "tokenizer": tokenizer,
        "data_cfg": data,
        "device": device,
        "precision": precision,
        "batch_size": int(cfg.batch_size),
        "beta": float(cfg.beta),
        "alpha": float(cfg.alpha),
        "tau": int(cfg.tau),
        "lr": float(cfg.optim.lr),
        "betas": list(cfg.optim.betas),
        "eps": float(cfg.optim.eps),
        "weight_decay": float(cfg.optim.weight_decay),
        "grad_clip": float(cfg.grad_clip),
        "warmup": int(cfg.warmup),
        "steps": int(cfg.steps),
        "threads": cfg.threads,
        "seed": int(cfg.seed),
        "ref_update_calls": int(cfg.ref_update_calls),
        "tralign": OmegaConf.to_container(cfg.tralign, resolve=True),
        "trl_best": OmegaConf.to_container(cfg.trl_best, resolve=True),
        "frameworks": list(cfg.frameworks),
        "peak_repeats": int(cfg.peak_repeats),
        "compile_warmup": int(cfg.compile_warmup),
    }


class WorkerTimeout(BenchError):
    """A worker ran past ``worker_timeout`` seconds (the scaling table records the cell as such)."""


def _worker(spec_path: Path, what: str, work: Path, timeout: float | None = None) -> dict[str, Any]:
    out = work / f"{what}-{time.monotonic_ns()}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tralign.bench.worker", str(spec_path), what, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise WorkerTimeout(f"{what} worker ran past {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BenchError(f"{what} worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def run(cfg: DictConfig, out_path: Path, log=print) -> dict[str, Any]:
    import torch

    device = str(cfg.device)
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("device=cuda: no CUDA device visible")
    precision = str(cfg.precision)
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    frameworks = list(cfg.frameworks)
    if "trl" in frameworks or cfg.check_loss:
        try:
            import trl  # noqa: F401
        except ImportError:
            raise BenchError('TRL is not installed: pip install -e ".[bench]" -c constraints.txt') from None
    if int(cfg.warmup) < 1 or int(cfg.steps) < 1:
        raise BenchError("warmup and steps must be >= 1 (the first step's interval has no start)")
    data, tokenizer = _data_cfg(cfg)
    with tempfile.TemporaryDirectory(prefix="tralign-bench-") as tmp:
        work = Path(tmp)
        model_info = _save_models(cfg, data, tokenizer, work)
        spec = make_spec(cfg, work, data, tokenizer, device, precision)
        spec["model_config"] = model_info["config"]
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        report: dict[str, Any] = {
            "settings": {k: v for k, v in spec.items() if not k.endswith("_dir")},
            "model": {"preset": str(cfg.model), **model_info},
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            },
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if cfg.check_loss:
            check = _worker(spec_path, "precheck", work)
            rtol = (
                float(cfg.loss_rtol) if cfg.loss_rtol is not None else (2e-2 if precision == "bf16" else 1e-4)
            )
            report["loss_check"] = {**check, "rtol": rtol}
            log(
                f"loss pre-check (first batch, {check['rows']} pairs): tralign {check['tralign_loss']:.6f}  "
                f"trl {check['trl_loss']:.6f}  identical tokens: {check['same_tokens']}"
            )
            if not check["same_tokens"]:
                raise BenchError("loss pre-check: the two collators built different token batches")
            check_losses(check["tralign_loss"], check["trl_loss"], rtol=rtol)
            for other in ("trl-best", "tralign-compile"):
                if f"{other}_loss" in check:
                    log(f"loss pre-check {other} {check[f'{other}_loss']:.6f}")
                    check_losses(check["tralign_loss"], check[f"{other}_loss"], rtol=rtol, name=other)
        # The matmul peak, before and after the runs (the best of both: the machine is shared).
        peaks = [_worker(spec_path, "peak", work)] if cfg.measure_peak else []
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in frameworks}
        for rep in range(int(cfg.repeats)):
            order = frameworks if rep % 2 == 0 else frameworks[::-1]
            for name in order:
                result = _worker(spec_path, name, work)
                runs[name].append(result)
                log(
                    f"repeat {rep + 1}/{cfg.repeats} {name}: "
                    f"{sum(result['tokens']) / sum(result['step_s']):.0f} tokens/s"
                )
        if peaks:
            peaks.append(_worker(spec_path, "peak", work))
    summary = {name: summarize(r) for name, r in runs.items()}
    if peaks:
        peak = max(peaks, key=lambda p: p["peak_flops_per_s"])
        report["matmul_peak"] = {**peak, "measurements": [p["peak_flops_per_s"] for p in peaks]}
        for name, r in runs.items():
            summary[name].update(mfu(r, model_info["config"], peak["peak_flops_per_s"]))
    for name, r in runs.items():
        if all(run.get("phases") for run in r):
            summary[name]["breakdown"] = summarize_phases([p for run in r for p in run["phases"]])
    report.update(summary=summary, runs=runs)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"bench.json: {out_path}")
    if peaks:
        log(peak_line(report["matmul_peak"]))
    for name, s in summary.items():
        if "breakdown" in s:
            log(breakdown_line(s["breakdown"], name))
    log(table(summary))
    return report


@hydra.main(version_base="1.3", config_path="conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir) / "bench.json"
    try:
        run(cfg, out)
    except BenchError as err:
        exit_on_user_error(err)


if __name__ == "__main__":
    main()
