"""``train.run`` is validate → preflight → build → fit → finish: ``build`` returns everything the fit
and the finish need in one ``Run``, and builds nothing the finish does (no export, no summary)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helpers.config import compose_cfg

from tralign.build import Run, build, effective_setup, preflight
from tralign.config import validate
from tralign.module import ReferenceUpdate


def test_build_returns_the_run_and_leaves_the_finish_to_finish(tmp_path: Path) -> None:
    cfg = compose_cfg([])
    validate(cfg)
    assert preflight(cfg, tmp_path) is None  # a fresh folder: nothing to resume
    run = build(cfg, tmp_path, None)
    assert isinstance(run, Run)
    assert [f.name for f in dataclasses.fields(Run)] == [
        "data",
        "tokenizer",
        "policy",
        "module",
        "trainer",
        "logger",
        "plan",
        "setup",
        "ckpt_path",
    ]
    assert run.module.policy is run.policy and run.trainer.global_step == 0
    assert run.setup == effective_setup(cfg, export_dtype=run.setup["dtypes"]["export"])
    assert run.plan.world == run.trainer.world_size
    assert sum(isinstance(cb, ReferenceUpdate) for cb in run.trainer.callbacks) == 1
    assert (tmp_path / "config_resolved.yaml").is_file()
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "policy").exists()
