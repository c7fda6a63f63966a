"""How far each LoRA reference mode is from the weight-space rule, on a real training run.

    python -m tralign.bench.lora_ref_error OUT_DIR [train overrides ...]
    e.g. python -m tralign.bench.lora_ref_error /tmp/svd model.lora.r=16 model.lora.ref_mode=svd

Trains exactly as ``python -m tralign.train <overrides>`` would (same composed config, logger off),
and next to the reference adapter tracks the rule densely, for this measurement only:
ΔW_exact ← α·ΔW_policy + (1 − α)·ΔW_exact per LoRA layer at every reference update. Writes
``OUT_DIR/ref_error.json``: ‖ΔW_ref − ΔW_exact‖_F / ‖ΔW_exact‖_F over all layers, the number of
updates, and the run's golden reward and KL (also in ``OUT_DIR/summary.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

CONF = Path(__file__).resolve().parents[2] / "conf"


def main(argv: list[str]) -> dict:
    from hydra import compose, initialize_config_dir

    from tralign.lora.adapters import POLICY, REFERENCE, ReferenceAdapter, lora_layers
    from tralign.lora.update import delta
    from tralign.train import run

    out, overrides = Path(argv[0]), argv[1:]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", "trainer.enable_progress_bar=false", *overrides])
    exact: dict[int, torch.Tensor] = {}
    views: list[ReferenceAdapter] = []
    original = ReferenceAdapter.move_toward_policy_

    def tracked(self: ReferenceAdapter, alpha: float) -> None:
        views[:] = [self]
        for _, layer in lora_layers(self.model):
            d = delta(
                layer.lora_B[POLICY].weight, layer.lora_A[POLICY].weight, layer.scaling[POLICY]
            ).double()
            exact[id(layer)] = alpha * d + (1 - alpha) * exact.get(id(layer), torch.zeros_like(d))
        original(self, alpha)

    ReferenceAdapter.move_toward_policy_ = tracked
    summary = run(cfg, out)
    err_sq = total_sq = 0.0
    for _, layer in lora_layers(views[0].model) if views else []:
        ref = delta(layer.lora_B[REFERENCE].weight, layer.lora_A[REFERENCE].weight, layer.scaling[REFERENCE])
        err_sq += float((ref.double() - exact[id(layer)]).square().sum())
        total_sq += float(exact[id(layer)].square().sum())
    result = {
        "overrides": overrides,
        "ref_updates": summary["ref_updates"],
        "rel_error": (err_sq / total_sq) ** 0.5 if total_sq else None,
        "dropped_fro": views[0].dropped_sq ** 0.5 if views else None,
        **{k: summary.get(k) for k in ("golden_reward", "golden_reward_init", "golden_kl_init", "params")},
    }
    (out / "ref_error.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
