"""Print one command line per job of a sweep, for launchers that start one process group per job
(torchrun, a cluster scheduler) instead of Hydra's in-process multirun:

    python sweeps/print_jobs.py alpha_soft experiment=tldr_pythia-2.8b data.path=D model.init_from=P \
        | xargs -L1 torchrun --nproc_per_node=8 -m tralign.train trainer.devices=8 trainer.strategy=ddp

Arguments: the sweep's name, then overrides as for ``python -m tralign.train -m +sweep=NAME``
(comma lists sweep, plain values replace the sweep's). Each printed line holds the job's overrides,
``hydra.run.dir=<sweep dir>/<job number>`` (the multirun layout, so ``python -m tralign.report <sweep
dir>`` reads it) and ``++logger.group=<sweep dir name>`` (the W&B group a multirun would set).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tralign.report.jobs import expand_sweep

CONF = Path(__file__).resolve().parents[1] / "tralign" / "conf"


def job_lines(name: str, overrides: list[str]) -> list[str]:
    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = [text for text, o in zip(overrides, parsed, strict=True) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"+sweep={name}", *plain], return_hydra_config=True)
    sweep_dir = Path(str(cfg.hydra.sweep.dir))  # resolves ${now:...} once, for every job
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    jobs = expand_sweep(params, [f"+sweep={name}", *overrides])
    extra = [f"++logger.group={sweep_dir.name}"]
    return [
        shlex.join([*job, f"hydra.run.dir={sweep_dir / str(num)}", *extra]) for num, job in enumerate(jobs)
    ]


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n".join(job_lines(sys.argv[1], sys.argv[2:])))
