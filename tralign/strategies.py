"""How the policy and its reference copies are spread over devices.

``trainer.strategy`` in the config is either a Lightning strategy name (``auto``, ``ddp`` …) passed
through as it is, or a mapping with ``name``:

- ``fsdp``: Lightning's ``FSDPStrategy`` (FSDP1; GPUs only). Every decoder block and each whole
  model (policy, reference, starting policy) is its own FSDP unit, so the policy and the reference
  are cut into flat shards the same way and a rank's policy shard lines up with its reference
  shard (see ``tralign.reference``).
- ``fsdp2``: Lightning's ``ModelParallelStrategy`` with ``torch.distributed.fsdp.fully_shard``
  applied by :meth:`AlignmentModule.configure_model` (:func:`shard_model`): every parameter becomes
  a ``DTensor`` sharded on dim 0 over the data-parallel mesh, identically for the three copies.
  Runs on CPU with gloo too, which is how the tests cover the sharded path. With
  ``trainer.strategy.hybrid=true`` the mesh is 2-D (:func:`shard_mesh`): shards within a node,
  replicas across nodes (HSDP, FSDP1's ``HYBRID_SHARD``).

The frozen copies (reference, starting policy) always free their gathered parameters after each
forward, whatever the policy does: the reference update writes the local shards in place, and a
forward that reused parameters gathered before the update would read the old weights (FSDP1
``SHARD_GRAD_OP``) or hand the update whole tensors instead of shards (FSDP2
``reshard_after_forward: false``). They take no gradients, so keeping them gathered until a backward
saves nothing. Same process groups and layout as the policy, so the shards still line up.

Nothing here runs at import time of the training loop; :func:`build_strategy` is called once the
policy exists (the wrap policy needs its decoder-block class).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
from torch import nn

SHARDED = ("fsdp", "fsdp2")
STRATEGY_KEYS: dict[str, set[str]] = {
    "fsdp": {
        "sharding_strategy",
        "activation_checkpointing",
        "state_dict_type",
        "cpu_offload",
        "limit_all_gathers",
        "timeout_minutes",
    },
    "fsdp2": {
        "mixed_precision",
        "reshard_after_forward",
        "activation_checkpointing",
        "save_distributed_checkpoint",
        "hybrid",
        "shard_size",
        "timeout_minutes",
    },
    "ddp": {"find_unused_parameters", "static_graph", "timeout_minutes"},
}
SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}
# How long a rank waits in a collective (a barrier around a checkpoint save included) before the
# process group gives up. torch's NCCL default (10 min; Lightning passes 30) is shorter than a slow
# filesystem takes for a 100+ GB save, after which the waiting ranks die mid-save.
DEFAULT_TIMEOUT_MINUTES = 60


def _timeout(options: Mapping[str, Any]) -> timedelta:
    return timedelta(minutes=float(options.get("timeout_minutes", DEFAULT_TIMEOUT_MINUTES)))


@dataclass(frozen=True)
class ShardPlan:
    """What :func:`shard_model` does to each copy under ``fsdp2``."""

    block: type[nn.Module]
    param_dtype: torch.dtype | None = None  # compute dtype of the gathered parameters (None: as stored)
    reshard_after_forward: bool = True
    hybrid: bool = False  # 2-D mesh: replicate across nodes, shard within (see shard_mesh)
    shard_size: int | None = None  # ranks per shard group under hybrid (None: the ranks of one node)

    def frozen(self) -> ShardPlan:
        """The plan of the frozen copies: the same shards, always resharded after forward."""
        return replace(self, reshard_after_forward=True)


# Lightning's own names for sharded strategies: as plain strings they would wrap the LightningModule
# without tralign's wrap policy (FSDP1: one flat parameter over all three copies).
SHARDED_NAMES = ("fsdp", "fsdp2", "model_parallel", "fsdp_cpu_offload", "deepspeed")


def strategy_problems(strategy: Any, accelerator: Any) -> list[str]:
    """Config problems of ``trainer.strategy``, naming the key; empty when fine."""
    if isinstance(strategy, str) and (strategy in SHARDED_NAMES or strategy.startswith("deepspeed")):
        return [
            f"trainer.strategy={strategy}: use trainer=fsdp (GPUs) or trainer=fsdp2 (GPUs or CPU), which shard "
            "the policy and its reference the same way"
        ]
    if not isinstance(strategy, Mapping):
        return []
    name = strategy.get("name")
    if name not in STRATEGY_KEYS:
        return [f"trainer.strategy.name: must be one of {', '.join(STRATEGY_KEYS)}, got {name!r}"]
    problems = [
        f"trainer.strategy.{key}: unknown for {name}; valid: {', '.join(sorted(STRATEGY_KEYS[name]))}"
        for key in strategy
        if key != "name" and key not in STRATEGY_KEYS[name]
    ]
    timeout = strategy.get("timeout_minutes", DEFAULT_TIMEOUT_MINUTES)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        problems.append(f"trainer.strategy.timeout_minutes: must be a number of minutes > 0, got {timeout!r}")
    if name == "fsdp" and (accelerator == "cpu" or not torch.cuda.is_available()):
        problems.append(
            "trainer=fsdp needs GPUs (Lightning's FSDPStrategy refuses CPU, and none is visible); "
            "use trainer=fsdp2 on CPU"
        )
    if name == "fsdp" and strategy.get("sharding_strategy", "FULL_SHARD") not in SHARDING_STRATEGIES:
        problems.append(
            f"trainer.strategy.sharding_strategy: must be one of {', '.join(SHARDING_STRATEGIES)}, "
            f"got {strategy.get('sharding_strategy')!r}"
        )
    if name == "fsdp2" and strategy.get("mixed_precision") not in DTYPES:
        problems.append(
            f"trainer.strategy.mixed_precision: must be bf16, fp16 or null, got {strategy.get('mixed_precision')!r}"
        )
    if name == "fsdp2":
        problems += _hybrid_problems(strategy)
    return problems


def _hybrid_problems(strategy: Mapping) -> list[str]:
    hybrid, shard_size = strategy.get("hybrid", False), strategy.get("shard_size")
    if not isinstance(hybrid, bool):
        return [f"trainer.strategy.hybrid: must be true or false, got {hybrid!r}"]
    if shard_size is None:
        return []
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        return [f"trainer.strategy.shard_size: must be a positive integer or null, got {shard_size!r}"]
    if not hybrid:
        return [
            "trainer.strategy.shard_size: only with trainer.strategy.hybrid=true (pure FSDP shards over all ranks)"
        ]
    return []


def decoder_block(model: nn.Module) -> type[nn.Module]:
    """The class of the model's repeated decoder block (``GPTNeoXLayer``, ``LlamaDecoderLayer`` …),
    from the Hugging Face model's ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in names:
            return type(module)
    raise ValueError(
        f"cannot find the decoder block of {type(model).__name__} (its _no_split_modules: {names})"
    )


def build_strategy(
    strategy: Any, policy: nn.Module, *, devices: Any, num_nodes: int, precision: Any = None
) -> tuple[Any, ShardPlan | None]:
    """The Lightning strategy for ``trainer.strategy``, and the fsdp2 plan for the module (or None)."""
    if not isinstance(strategy, Mapping):
        return strategy, None
    options = {k: v for k, v in strategy.items() if k not in ("name", "timeout_minutes")}
    name = strategy["name"]
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(**options, timeout=_timeout(strategy)), None
    block = decoder_block(policy)
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        units = {block, type(policy)}  # each whole copy is a unit: identical shards for policy and reference
        sharding = options.get("sharding_strategy", "FULL_SHARD")
        return (
            FSDPStrategy(
                auto_wrap_policy=_fsdp1_wrap_policy(units, sharding),
                activation_checkpointing_policy={block} if options.get("activation_checkpointing") else None,
                sharding_strategy=sharding,
                state_dict_type=options.get("state_dict_type", "sharded"),
                cpu_offload=bool(options.get("cpu_offload", False)),
                limit_all_gathers=bool(options.get("limit_all_gathers", True)),
                use_orig_params=True,  # frozen and trained copies side by side; per-parameter views
                mixed_precision=_fsdp1_mixed_precision(precision),
                timeout=_timeout(strategy),
            ),
            None,
        )
    world = _world_size(devices, num_nodes)  # "auto": resolved from the process group (FSDP2Strategy)
    if options.get("activation_checkpointing"):
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    plan = ShardPlan(
        block=block,
        param_dtype=DTYPES[options.get("mixed_precision")],
        reshard_after_forward=bool(options.get("reshard_after_forward", True)),
        hybrid=bool(options.get("hybrid", False)),
        shard_size=options.get("shard_size"),
    )
    return (
        _fsdp2_strategy_class()(
            data_parallel_size=world,  # pure FSDP2: every rank in one data-parallel group
            tensor_parallel_size=1,
            save_distributed_checkpoint=bool(options.get("save_distributed_checkpoint", True)),
            timeout=_timeout(strategy),
        ),
        plan,
    )


def take_fsdp1_clip_norm(strategy: Any, trainer_kwargs: dict[str, Any]) -> float | None:
    """Under FSDP1, remove a norm-clipping ``gradient_clip_val`` from the Trainer arguments and return
    it: Lightning's FSDP precision plugin refuses norm clipping, so the module clips through the FSDP
    root (the norm over all ranks' shards). Clipping by value is elementwise: Lightning's own."""
    from lightning.pytorch.strategies import FSDPStrategy

    by_norm = trainer_kwargs.get("gradient_clip_algorithm") in (None, "norm")
    if isinstance(strategy, FSDPStrategy) and trainer_kwargs.get("gradient_clip_val") and by_norm:
        return float(trainer_kwargs.pop("gradient_clip_val"))
    return None


# FSDP1 strategies that keep the gathered parameters from the forward to the backward, and their
# variant that frees them after the forward (same process groups, same flat shards).
_RESHARD_AFTER_FORWARD = {"SHARD_GRAD_OP": "FULL_SHARD"}


def _fsdp1_wrap_policy(units: set[type[nn.Module]], sharding: str) -> Any:
    """Wrap every module of the classes ``units``. Under ``SHARD_GRAD_OP`` the units of the frozen
    copies (no parameter takes gradients) are ``FULL_SHARD`` instead: FSDP1 keeps a no-grad
    forward's gathered parameters until a backward that never comes, so the next forward would reuse
    them and never see the reference update written into the local shards."""
    if sharding not in _RESHARD_AFTER_FORWARD:
        return units
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import CustomPolicy

    frozen = {"sharding_strategy": ShardingStrategy[_RESHARD_AFTER_FORWARD[sharding]]}

    def wrap(module: nn.Module) -> bool | dict[str, Any]:
        if not isinstance(module, tuple(units)):
            return False
        return frozen if not any(p.requires_grad for p in module.parameters()) else True

    return CustomPolicy(wrap)


def _fsdp1_mixed_precision(precision: Any):
    """bf16 compute, but gradients reduced in fp32 and buffers kept fp32: Lightning's default for
    bf16-mixed casts buffers too, and a bf16 rotary ``inv_freq`` shifts the positional phases (~1 rad
    by position 1000), so training would see another positional encoding than the exported model."""
    if precision not in ("bf16-mixed", "bf16-true", "bf16"):
        return None
    from torch.distributed.fsdp import MixedPrecision

    return MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, buffer_dtype=torch.float32)


def _world_size(devices: Any, num_nodes: int) -> int | str:
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:  # -1: all of them
        return devices * int(num_nodes)
    if isinstance(devices, (list, tuple)):
        return len(devices) * int(num_nodes)
    return "auto"  # devices=auto/-1/"N": FSDP2Strategy resolves it from the real world size


@functools.cache
def _fsdp2_strategy_class() -> type:
    """Lightning's ``ModelParallelStrategy`` with the data-parallel size taken from the real world
    size once the process group exists. Lightning's own ``"auto"`` means ``num_nodes`` (it assumes
    tensor parallelism fills a node), which fails its "should equal the world size" check as soon
    as a node has more than one device."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    class FSDP2Strategy(ModelParallelStrategy):
        def _setup_distributed(self) -> None:
            super()._setup_distributed()  # world size known from here on; the mesh is built next
            if self._data_parallel_size == "auto":
                self._data_parallel_size = self.world_size // int(self._tensor_parallel_size)

    return FSDP2Strategy


def shard_mesh(data_parallel: Any, plan: ShardPlan, num_nodes: int) -> Any:
    """The mesh ``fully_shard`` gets. Pure FSDP: the 1-D data-parallel mesh. Hybrid (HSDP): a 2-D
    ``(replicate, shard)`` mesh over the same ranks, shard groups of ``plan.shard_size`` consecutive
    ranks (default: one node's; launchers number ranks node by node), so parameter gathers and
    gradient reduce-scatters stay inside a node and only a gradient all-reduce crosses nodes.
    Placements are then ``(Replicate(), Shard(0))`` for every copy alike, so a rank's policy shard
    still lines up with its reference shard. A collective (new process groups): every rank calls it.
    """
    if not plan.hybrid:
        return data_parallel
    from torch.distributed.device_mesh import init_device_mesh

    from tralign.errors import ConfigError

    world = data_parallel.size()
    shard = plan.shard_size or world // max(1, int(num_nodes))
    if shard < 1 or world % shard:
        raise ConfigError(
            [
                f"trainer.strategy.shard_size: {shard} ranks per shard group do not divide the world size {world}"
            ]
        )
    return init_device_mesh(
        data_parallel.device_type, (world // shard, shard), mesh_dim_names=("replicate", "shard")
    )


def shard_model(model: nn.Module, plan: ShardPlan, mesh: Any) -> None:
    """``fully_shard`` every decoder block, then the whole model (embeddings, head, final norm)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": plan.reshard_after_forward}
    if plan.param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=plan.param_dtype, reduce_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, plan.block):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)


def is_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are FSDP shards (FSDP2 DTensors or FSDP1 flat views)."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    if isinstance(model, FullyShardedDataParallel):
        return True
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dicts(
    module: nn.Module, root: nn.Module, names: list[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """``{name: whole state dict}`` of the sharded submodules ``names`` of ``module``, on CPU on rank 0
    (empty dicts elsewhere). A collective: every rank must call it.

    FSDP2 gathers one submodule at a time (``get_model_state_dict``, full, CPU-offloaded). FSDP1 can
    only produce a full state dict from its root (``root``): one rank-0-only gather of the whole
    LightningModule (offloaded to CPU when it runs on an accelerator), split by prefix (rank 0
    holds every copy in CPU memory meanwhile).
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(root, FullyShardedDataParallel):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType

        # offload_to_cpu only from an accelerator: with the flat parameters on CPU, FSDP1's
        # ``FlatParamHandle.to_cpu`` "moves" the gathered parameter to where it already is, then
        # frees that same storage, and the state_dict clone reads freed memory (segfault).
        offload = root.compute_device.type != "cpu"
        config = FullStateDictConfig(offload_to_cpu=offload, rank0_only=True)
        with FullyShardedDataParallel.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
            state = root.state_dict()
        return {
            name: {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
            for name in names
        }
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {name: get_model_state_dict(getattr(module, name), options=options) for name in names}
