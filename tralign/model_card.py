"""A model card (``README.md``) in every exported ``policy/``: what the model is and how it was made,
ready to push to the Hugging Face hub as is (its front matter is the hub's metadata)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The command that made this run, when it did not come from Hydra's command line (tralign.api).
API_COMMAND: str | None = None

_PAPER = "https://arxiv.org/abs/2404.09656"


def command_line() -> str:
    """The command that made the current run: Hydra's overrides as a pasteable command line."""
    if API_COMMAND:
        return API_COMMAND
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        return "(not recorded)"
    return " ".join(["tralign-train", *(shlex.quote(o) for o in overrides)])


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(summary: dict[str, Any], cfg: DictConfig, command: str) -> str:
    """The card's text: hub metadata, then method, α/τ/β, data, steps, final metrics and the command."""
    method, ref_update = summary.get("method"), summary.get("ref_update")
    base = cfg.model.get("name_or_path") or cfg.model.get("init_from")
    tags = ["tralign", "preference-alignment", str(cfg.method.loss)]
    if cfg.method.get("trust_region") or ref_update != "none":
        tags.append("trust-region")
    meta = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": tags}
    if cfg.model.get("name_or_path"):
        meta["base_model"] = str(cfg.model.name_or_path)
    front = OmegaConf.to_yaml(OmegaConf.create(meta)).strip()
    if ref_update == "none":
        reference = "a frozen reference (the starting model)"
    else:
        reference = (
            f"a moving reference ({ref_update} update: ref ← α·policy + (1−α)·ref every τ optimizer steps, "
            f"α = {summary.get('alpha')}, τ = {summary.get('tau')})"
        )
    metrics = {**(summary.get("val") or {})}
    for key in ("golden_reward_init", "golden_reward", "golden_kl_init"):
        if key in summary:
            metrics[key] = summary[key]
    rows = "\n".join(f"| `{k}` | {_fmt(v)} |" for k, v in metrics.items()) or "| (none) | |"
    return f"""---
{front}
---

# {cfg.model.name} trained with {method}

A causal language model trained by tralign with **{method}** (loss
`{cfg.method.loss}`, β = {summary.get("beta")}) against {reference}: Trust Region preference
alignment, [Gorbatovski et al., 2024]({_PAPER}).

| | |
| --- | --- |
| base model | {base or f"{cfg.model.name} (trained from a random initialisation)"} |
| method | {method} (`ref_update={ref_update}`, α = {summary.get("alpha")}, τ = {summary.get("tau")}, β = {summary.get("beta")}) |
| data | {summary.get("data")} |
| optimizer steps | {summary.get("global_step")} (global batch {summary.get("global_batch_size", "n/a")}, lr {_fmt(float(cfg.optim.lr))}) |
| seed | {summary.get("seed")} |

## Final metrics

| metric | value |
| --- | --- |
{rows}

## How it was made

```bash
{command}
```

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```
"""


def write_model_card(
    path: Path, summary: dict[str, Any], cfg: DictConfig, command: str | None = None
) -> Path:
    """Write ``path/README.md`` (``path``: an exported model folder); returns the file."""
    card = Path(path) / "README.md"
    card.write_text(model_card(summary, cfg, command or command_line()), encoding="utf-8")
    return card
