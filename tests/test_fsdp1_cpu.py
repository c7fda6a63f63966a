"""``trainer=fsdp`` (Lightning's FSDPStrategy, FSDP1) end to end on CPU: 2 gloo ranks under torchrun.

The product refuses FSDP1 without a GPU (Lightning does, and so does ``strategy_problems``), so the
test runs ``tralign.train.main`` through a small shim script it writes itself; the shim changes only
what stands between FSDP1 and a CPU:

- Lightning's ``AcceleratorConnector._check_strategy_and_fallback`` refuses
  ``type(strategy) is FSDPStrategy`` unless the accelerator is a GPU: the strategy tralign builds is
  re-classed to a subclass (:class:`CPUFSDPStrategy`), which that identity check lets through;
- ``FullyShardedDataParallel`` needs ``device_id`` on CPU (without it FSDP1 looks for an accelerator,
  and Lightning passes ``root_device.index``, None on CPU): the subclass passes ``torch.device("cpu")``
  to every unit it wraps;
- tralign's own refusal (``trainer=fsdp needs GPUs``) is dropped from ``strategy_problems``.

Everything else is the shipped path: tralign's wrap policy (decoder blocks and each whole copy,
``use_orig_params=True``), gradient clipping through the FSDP root
(``AlignmentModule.configure_gradient_clipping``), the shard-local reference update on FSDP1's flat
shards, Lightning's sharded checkpoints through ``AtomicCheckpoint``, resume, and the rank-0 full
state dict gathered before ``trainer.validate`` for the export. The shim also records every gradient
clip (``FullyShardedDataParallel.clip_grad_norm_`` under FSDP1, ``torch.nn.utils.clip_grad_norm_``
in the one-process run) so the test can see that the clip ran on the root, bound, and saw the global
norm.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.config import SHRINK
from helpers.fsdp1_shim import shim_env
from helpers.processes import TORCHRUN, sigkill_after_checkpoint
from helpers.runs import train_here
from safetensors.torch import load_file

from tralign.checkpoint import PARTIAL

# Both tests compare with the module-scoped one-process run: one worker makes it once.
pytestmark = pytest.mark.xdist_group("fsdp1_cpu")

CLIP = 0.05  # far below the gradient norms of this run: the clip binds at every step
RUN = [
    a
    for a in SHRINK
    if not a.startswith(
        ("trainer.max_steps", "data.batch_size", "data.n_train", "trainer.val_check_interval")
    )
] + [
    "data.n_train=40",  # 5 global batches of 8 per epoch
    "trainer.val_check_interval=100",
    "export.reference=true",
    "data.golden_eval=null",
    f"trainer.gradient_clip_val={CLIP}",
    "alpha=0.5",  # soft update every step, large enough that the reference moves measurably
]
FSDP1 = [
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "data.batch_size=4",
]


def _launch(tmp_path: Path, name: str, args: list[str], *, torchrun: bool) -> tuple[list[str], dict, Path]:
    env = shim_env(tmp_path, f"{name}-clips")
    shim = tmp_path / "fsdp1_cpu_shim.py"
    cmd = [sys.executable, *(TORCHRUN if torchrun else []), str(shim), *RUN, *args]
    return [*cmd, f"hydra.run.dir={tmp_path / name}"], env, tmp_path / name


def _train(tmp_path: Path, name: str, *args: str, torchrun: bool) -> Path:
    cmd, env, run_dir = _launch(tmp_path, name, list(args), torchrun=torchrun)
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return run_dir


def _kill_after(tmp_path: Path, name: str, checkpoint: str, *args: str) -> Path:
    """A 2-rank run that would train for long, SIGKILLed (torchrun and both ranks) once
    ``checkpoint`` is in place; returns the checkpoint's path."""
    cmd, env, run_dir = _launch(tmp_path, name, [*args, "trainer.max_steps=100000"], torchrun=True)
    return sigkill_after_checkpoint(
        cmd, tmp_path, env, run_dir / "checkpoints" / checkpoint, tmp_path / f"{name}.log"
    )


def _clips(tmp_path: Path, name: str) -> dict[int, list[dict]]:
    folder = tmp_path / f"{name}-clips"
    return {
        int(p.stem.removeprefix("clip-rank")): [json.loads(line) for line in p.read_text().splitlines()]
        for p in folder.glob("clip-rank*.jsonl")
    }


def _weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {part: load_file(run_dir / part / "model.safetensors") for part in ("policy", "reference")}


def _max_diff(a: Path, b: Path) -> dict[str, float]:
    wa, wb = _weights(a), _weights(b)
    out = {}
    for part in wa:
        assert wa[part].keys() == wb[part].keys(), part
        out[part] = max((wa[part][k] - wb[part][k]).abs().max().item() for k in wa[part])
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    """The plain one-process run (no FSDP) at 8 pairs for 8 steps: its folder and its gradient
    norm before clipping at each optimizer step."""
    tmp_path = tmp_path_factory.mktemp("fsdp1-one-process")
    # No FSDP, so no shim: trained in this process (no CLI start-up), each clip's norm recorded.
    clip, norms = torch.nn.utils.clip_grad_norm_, []

    def recording_clip(parameters, max_norm, *args, **kwargs):
        total = clip(parameters, max_norm, *args, **kwargs)
        norms.append(float(total))
        return total

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
        one = train_here(tmp_path / "one", [*RUN, "data.batch_size=8", "trainer.max_steps=8"])
    assert len(norms) == 8 and min(norms) > 4 * CLIP  # the clip changes every step's update
    return one, norms


@pytest.mark.slow
@pytest.mark.e2e
def test_fsdp1_two_ranks_on_cpu_clip_through_the_root_and_resume_to_the_one_process_result(
    tmp_path: Path, one_process: tuple[Path, list[float]]
) -> None:
    """One process at 8 pairs ≡ 2 FSDP1 ranks at 4 pairs each, killed after step 4 and resumed from
    the sharded checkpoint: the exported policy and reference agree within 1e-5, and every step's
    gradient clip ran on the FSDP root with the global norm (the one-process norm), and bound."""
    one, plain = one_process
    saved = _kill_after(tmp_path, "killed", "step-000004.ckpt", *FSDP1)
    # Lightning's sharded FSDP1 checkpoint: a folder, one shard file per rank, written atomically.
    assert saved.is_dir() and (saved / "meta.pt").is_file() and (saved / ".metadata").is_file()
    assert sorted(p.name for p in saved.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(saved.parent.glob(f"*{PARTIAL}"))
    resumed = _train(
        tmp_path, "resumed", *FSDP1, "trainer.max_steps=8", f"ckpt_path='{saved}'", torchrun=True
    )

    diff = _max_diff(one, resumed)
    print(f"FSDP1 2 ranks (killed at step 4, resumed) vs 1 process, max abs diff: {diff}")
    assert diff["policy"] < 1e-5 and diff["reference"] < 1e-5, diff

    s_one, s_two = (json.loads((d / "summary.json").read_text()) for d in (one, resumed))
    assert s_two["global_batch_size"] == s_one["global_batch_size"] == 8
    assert s_two["global_step"] == s_one["global_step"] == 8
    assert s_two["ref_updates"] == s_one["ref_updates"] == 8  # soft update after every step
    # trainer.validate ran after the gather, on all of the validation set, on both ranks.
    assert s_two["val"]["val/loss"] == pytest.approx(s_one["val"]["val/loss"], abs=1e-5)
    assert s_two["val"]["val/init/rewards/margins"] == pytest.approx(
        s_one["val"]["val/init/rewards/margins"], abs=1e-4
    )

    # Clipping: FSDP1's on every rank, on the root, with the one-process run's (global) norm.
    for name, steps in (("killed", range(4)), ("resumed", range(4, 8))):
        ranks = _clips(tmp_path, name)
        assert sorted(ranks) == [0, 1], name
        for rank, calls in ranks.items():
            assert all(c["kind"] == "fsdp" and c["root"] and c["max_norm"] == CLIP for c in calls), calls
            norms = [c["norm"] for c in calls]
            # the killed run may have taken a step or two past step 4 before the kill
            for step, norm in zip(steps, norms, strict=False):
                assert norm == pytest.approx(plain[step], rel=1e-4), (name, rank, step)
        assert len(ranks[0]) >= len(steps)

    from transformers import AutoModelForCausalLM

    assert sorted(p.name for p in (resumed / "policy").iterdir() if p.suffix == ".safetensors") == [
        "model.safetensors"
    ]
    model = AutoModelForCausalLM.from_pretrained(resumed / "policy")
    exported = load_file(resumed / "policy" / "model.safetensors")
    for key, value in model.state_dict().items():
        if key in exported:
            torch.testing.assert_close(value, exported[key], atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.e2e
def test_fsdp1_bf16_mixed_on_cpu_trains_in_bf16_and_exports_fp32(
    tmp_path: Path, one_process: tuple[Path, list[float]]
) -> None:
    """``trainer=fsdp``'s own precision (bf16-mixed: tralign's MixedPrecision, bf16 parameters in
    compute, fp32 reduction, buffers and master weights) on 2 CPU ranks: close to the fp32
    one-process run, not equal to it (the compute really was bf16), exported in fp32."""
    one, plain = one_process
    bf16 = [a if a != "trainer.precision=32-true" else "trainer.precision=bf16-mixed" for a in FSDP1]
    run = _train(tmp_path, "bf16", *bf16, "trainer.max_steps=8", torchrun=True)
    diff = _max_diff(one, run)
    print(f"FSDP1 bf16-mixed 2 ranks vs fp32 1 process, max abs diff: {diff}")
    assert diff["policy"] < 5e-3 and diff["reference"] < 5e-3, diff  # lr 1e-3 x 8 steps moved ~1e-2
    assert {v.dtype for part in _weights(run).values() for v in part.values()} == {torch.float32}
    ranks = _clips(tmp_path, "bf16")
    assert sorted(ranks) == [0, 1] and ranks[0] == ranks[1]  # one global norm, computed on the root
    norms = [c["norm"] for c in ranks[0]]
    assert all(c["root"] and c["kind"] == "fsdp" for c in ranks[0])
    assert norms == pytest.approx(plain, rel=1e-2)
    assert norms != plain  # bitwise equal would mean fp32 compute
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["global_step"], summary["ref_updates"], summary["global_batch_size"]) == (8, 8, 8)
