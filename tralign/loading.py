"""Loading a checkpoint into a sharded policy without a whole model per rank.

Under ``trainer=fsdp2`` every rank builds the policy with its parameters on the meta device (buffers
such as rotary ``inv_freq`` are computed for real: they are small and not in checkpoints),
the frozen copies are meta copies of it, and :meth:`AlignmentModule.configure_model` shards all three,
materialises only the meta tensors, and then

- reads each rank's own slices of the checkpoint's safetensors files into the policy's local shards
  (:func:`read_local_shards_`: a ``seek`` + ``readinto`` per tensor, no mmap, no whole tensor; a hub
  id is read from its cached snapshot), or, for a checkpoint without safetensors files or whose
  names do not match the model's, rank 0 loads it and broadcasts
  (``set_model_state_dict(..., broadcast_from_rank0=True)``);
- copies the policy's local shards into the reference and starting policy (no gather, no host copy).

Models built from scratch (no checkpoint) are built whole, as before, so ``model.init_seed`` gives
the same weights; only their frozen copies start on the meta device.

Under ``trainer=fsdp`` (FSDP1) a checkpoint's policy is loaded on rank 0 only, built on the meta
device elsewhere; FSDP1 materialises the meta tensors (:func:`fsdp1_param_init`) and broadcasts rank
0's weights (``sync_module_states``, GPUs only); the frozen copies are filled from the policy's
local shards once wrapped (``AlignmentModule.on_fit_start``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class DeferredWeights:
    """Where a policy built without weights gets them, and the dtypes of the trained and frozen
    copies. ``source`` is None for a from-scratch policy, which is built whole (its frozen copies
    are still deferred)."""

    strategy: str  # "fsdp" or "fsdp2"
    source: str | None
    config: Any = None  # the transformers config the policy was built from (for the rank-0 fallback)
    dtype: torch.dtype = torch.float32
    reference_dtype: torch.dtype | None = None
    trust_remote_code: bool = False
    entries: Mapping[str, Any] | None = None  # model name -> safetensors entry; None: through rank 0


def _dtype(name: Any) -> torch.dtype | None:
    if name is None:
        return None
    if isinstance(name, torch.dtype):
        return name
    return getattr(torch, str(name).removeprefix("torch."))


def _model_dtype(model_cfg: Mapping[str, Any]) -> torch.dtype:
    """The trained weights' dtype (``model.dtype``, float32 by default)."""
    return _dtype(model_cfg.get("dtype") or "float32")


def sharded_strategy(strategy_cfg: Any) -> str | None:
    """ "fsdp" or "fsdp2" for a ``trainer.strategy`` mapping that shards, else None."""
    if isinstance(strategy_cfg, Mapping) and strategy_cfg.get("name") in ("fsdp", "fsdp2"):
        return str(strategy_cfg["name"])
    return None


def checkpoint_source(model_cfg: Mapping[str, Any]) -> str | None:
    """The folder or hub id the policy's weights come from (``init_from`` wins), None from scratch."""
    return model_cfg.get("init_from") or model_cfg.get("name_or_path") or None


def is_rank_zero() -> bool:
    """Global rank 0, also before the process group exists (torchrun/SLURM set RANK; Lightning's
    own launcher sets LOCAL_RANK/NODE_RANK in the processes it starts, none in the first)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def build_policy_for_strategy(
    model_cfg: Mapping[str, Any], tokenizer: Any, strategy_cfg: Any
) -> tuple[nn.Module, DeferredWeights | None]:
    """The policy and, under fsdp/fsdp2, how its (and its frozen copies') weights arrive later.

    Without a sharded strategy this is :func:`tralign.models.build_policy` and None."""
    from tralign.models import build_policy

    strategy = sharded_strategy(strategy_cfg)
    source = checkpoint_source(model_cfg)
    dtype = _model_dtype(model_cfg)
    reference_dtype = _dtype(model_cfg.get("reference_dtype"))
    trust = bool(model_cfg.get("trust_remote_code", False))
    if strategy is None:
        return build_policy(model_cfg, tokenizer), None
    if source is None:  # from scratch: init_seed decides the weights, as without sharding
        policy = build_policy(model_cfg, tokenizer)
        return policy, DeferredWeights(strategy, source, policy.config, dtype, reference_dtype, trust)
    policy = build_empty_policy(model_cfg, dtype)
    folder = local_checkpoint(source)
    entries = checkpoint_entries(policy, folder) if folder is not None else None
    weights = DeferredWeights(strategy, source, policy.config, dtype, reference_dtype, trust, entries)
    if strategy == "fsdp" and is_rank_zero():
        # FSDP1 broadcasts rank 0's module (sync_module_states): only rank 0 holds the weights.
        materialize_meta_(policy, "cpu")
        load_policy_(policy, weights, broadcast=False)
    return policy, weights


def local_checkpoint(source: str) -> Path | None:
    """The folder holding ``source``'s safetensors files: itself, or the hub cache's snapshot
    (downloaded like ``from_pretrained`` would, safetensors and JSON only); None if there is none."""
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json"]))
    except Exception:  # offline and not cached, no such repo …: rank 0's from_pretrained reports it
        return None
    return folder if safetensors_index(folder) is not None else None


def build_empty_policy(model_cfg: Mapping[str, Any], dtype: torch.dtype) -> nn.Module:
    """The checkpoint's architecture with parameters on the meta device and real buffers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tralign.errors import TralignError
    from tralign.models import _load_failed

    source = checkpoint_source(model_cfg)
    key = "model.init_from" if model_cfg.get("init_from") else "model.name_or_path"
    if key == "model.init_from" and not Path(str(source)).is_dir():
        raise TralignError(f"model.init_from={source}: no such folder (expected <run dir>/policy)")
    trust = bool(model_cfg.get("trust_remote_code", False))
    try:
        config = AutoConfig.from_pretrained(
            str(source), trust_remote_code=trust, **dict(model_cfg.get("config") or {})
        )
    except (OSError, ValueError) as err:
        raise _load_failed(key, str(source), err) from None
    with params_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust)
    if model_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Parameters registered inside go to the meta device; buffers stay real.

    A parameter is created (uninitialised, so no page is touched) and moved to meta as it is
    registered, before any initialiser runs. Buffers are computed as in a normal build, so the
    non-persistent ones (rotary ``inv_freq``, which no checkpoint holds) are right from the start.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:
            meta = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            meta.__dict__.update(param.__dict__)
            module._parameters[name] = meta

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def meta_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A deep copy whose parameters are on the meta device (``dtype`` if given; tied parameters
    stay tied), buffers copied: costs the buffers only."""
    memo: dict[int, Any] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(
            torch.empty_like(param, device="meta", dtype=dtype or param.dtype),
            requires_grad=param.requires_grad,
        )
    import copy

    return copy.deepcopy(model, memo)


def materialize_meta_(model: nn.Module, device: torch.device | str) -> None:
    """Give every meta parameter/buffer uninitialised storage on ``device``; real tensors (buffers
    such as ``inv_freq``, an already-loaded policy) are left as they are. Unlike ``to_empty``, which
    would wipe the buffers. Works on FSDP2-sharded modules (their ``_apply`` re-points the shards)."""
    if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return
    model._apply(lambda t: torch.empty_like(t, device=device) if t.is_meta else t)


def fsdp1_param_init() -> Any:
    """FSDP1's ``param_init_fn``: materialise only the meta tensors of one module, on the current
    accelerator (FSDP1's default calls ``reset_parameters`` on every module with states, which rotary
    embeddings lack, and ``to_empty``, which would wipe the real buffers)."""

    def init(module: nn.Module) -> None:  # FSDP1 calls it on each module of a unit
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        module._apply(lambda t: torch.empty_like(t, device=device) if t.is_meta else t, recurse=False)

    return init


# --- reading each rank's slices of safetensors files ---------------------------------------------
@dataclass(frozen=True)
class _Entry:
    file: Path
    start: int  # absolute byte offset of the tensor's data
    dtype: torch.dtype
    shape: tuple[int, ...]


def safetensors_index(folder: str | Path) -> dict[str, _Entry] | None:
    """``{name: where its bytes are}`` for a folder of safetensors files, None if it has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    entries: dict[str, _Entry] = {}
    for name in files:
        path = folder / name
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            if info["dtype"] not in SAFETENSORS_DTYPES:
                return None
            start = 8 + size + int(info["data_offsets"][0])
            entries[key] = _Entry(path, start, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]))
    return entries


def _local_and_offset(param: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The rank-local tensor of a parameter and where it starts in the whole tensor."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
        return param.to_local(), tuple(offset)
    return param.detach(), (0,) * param.dim()


def _read_rows(entry: _Entry, local: torch.Tensor, offset: tuple[int, ...]) -> None:
    """Copy the block of the checkpoint tensor at ``offset`` with ``local``'s shape into ``local``:
    one contiguous read of the rows it spans (dim 0), cast to ``local``'s dtype."""
    if local.numel() == 0:
        return
    rows = local.shape[0] if local.dim() else 1
    row_numel = 1
    for n in entry.shape[1:]:
        row_numel *= n
    itemsize = torch.empty((), dtype=entry.dtype).element_size()
    first = offset[0] if offset else 0
    direct = (
        entry.dtype == local.dtype
        and local.device.type == "cpu"
        and local.is_contiguous()
        and tuple(local.shape[1:]) == entry.shape[1:]
    )
    buffer = local if direct else torch.empty((rows, *entry.shape[1:]), dtype=entry.dtype)
    raw = buffer.reshape(-1).view(torch.uint8).numpy()
    with open(entry.file, "rb", buffering=0) as fh:
        fh.seek(entry.start + first * row_numel * itemsize)
        view, done = memoryview(raw), 0
        while done < len(raw):
            n = fh.readinto(view[done:])
            if not n:
                raise OSError(f"{entry.file}: truncated")
            done += n
    if not direct:
        block = buffer
        for dim in range(1, local.dim()):
            block = block.narrow(dim, offset[dim], local.shape[dim])
        local.copy_(block)


def _aliases(model: nn.Module) -> list[tuple[list[str], torch.Tensor]]:
    """Each distinct parameter (tied ones once) and persistent buffer with all its names."""
    groups: dict[int, tuple[list[str], torch.Tensor]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), ([], param))[0].append(name)
    persistent = set(model.state_dict().keys())
    for name, buf in model.named_buffers(remove_duplicate=False):
        if name in persistent:
            groups.setdefault(id(buf), ([], buf))[0].append(name)
    return list(groups.values())


def _model_names(model: nn.Module, keys: list[str]) -> dict[str, str]:
    """Checkpoint key -> the model's name, by transformers' own renamings for this architecture
    (e.g. GPT-NeoX's ``embed_out`` -> ``lm_head``, a base model's missing prefix). Keys that need
    a real conversion (merged or split tensors) map to nothing."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key

        transforms = get_model_conversion_mapping(model)
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
        names = {n: True for n, _ in model.named_parameters(remove_duplicate=False)}
        names.update({n: True for n, _ in model.named_buffers(remove_duplicate=False)})
        out = {}
        for key in keys:
            renamed, converter = rename_source_key(
                key, renamings, converters, getattr(model, "base_model_prefix", None), names
            )
            if converter is None:
                out[key] = renamed
        return out
    except (ImportError, AttributeError, TypeError):  # another transformers: names as they are
        return {key: key for key in keys}


def checkpoint_entries(model: nn.Module, folder: str | Path) -> dict[str, _Entry] | None:
    """``{model name: checkpoint entry}`` for every parameter (and persistent buffer the checkpoint
    has) of an unsharded ``model``; None when the folder has no safetensors files or a parameter has
    no entry of its shape (then rank 0 loads it with ``from_pretrained`` and broadcasts)."""
    index = safetensors_index(folder)
    if index is None:
        return None
    renamed = {name: index[key] for key, name in _model_names(model, list(index)).items()}
    plan = {}
    for names, tensor in _aliases(model):
        found = next((n for n in names if n in renamed), None)
        if found is None:
            if isinstance(tensor, nn.Parameter):
                return None
            continue  # a persistent buffer the checkpoint lacks keeps its built value
        if renamed[found].shape != tuple(tensor.shape):
            return None
        plan.update({n: renamed[found] for n in names})
    return plan


@torch.no_grad()
def read_local_shards_(model: nn.Module, entries: Mapping[str, _Entry]) -> None:
    """Fill each parameter's rank-local shard (and persistent buffers) from the checkpoint entries
    (:func:`checkpoint_entries` of the unsharded model; names do not change under ``fully_shard``)."""
    for names, tensor in _aliases(model):
        if names[0] in entries:
            local, offset = _local_and_offset(tensor)
            _read_rows(entries[names[0]], local, offset)


def _from_pretrained(weights: DeferredWeights) -> nn.Module:
    from transformers import AutoModelForCausalLM

    trust = weights.trust_remote_code  # model.trust_remote_code, as given
    return AutoModelForCausalLM.from_pretrained(
        str(weights.source), config=weights.config, dtype=weights.dtype, trust_remote_code=trust
    )


@torch.no_grad()
def broadcast_from_rank0_(model: nn.Module, weights: DeferredWeights) -> None:
    """Rank 0 loads the whole checkpoint (``from_pretrained``) and broadcasts it into the shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state: dict[str, torch.Tensor] = {}
    if is_rank_zero():
        state = _from_pretrained(weights).state_dict()
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state, options=options)


def load_policy_(policy: nn.Module, weights: DeferredWeights, broadcast: bool = True) -> None:
    """Fill a materialised (sharded or whole) policy from ``weights.source``: each rank's own slices
    of the safetensors files; else rank 0 loads it whole, and broadcasts it into the shards."""
    if weights.entries is not None:
        read_local_shards_(policy, weights.entries)
    elif broadcast:
        broadcast_from_rank0_(policy, weights)
    else:
        policy.load_state_dict(_from_pretrained(weights).state_dict())


@torch.no_grad()
def copy_local_shards_(dst: nn.Module, src: nn.Module) -> None:
    """``dst`` ← ``src`` shard by shard (same architecture, sharded the same way), cast to ``dst``'s
    dtype: no gather, no whole copy."""
    from tralign.reference import _paired_tensors

    for d, s in zip(*_paired_tensors(dst, src), strict=True):
        d.copy_(s)


def prepare_fsdp1(strategy: Any, weights: DeferredWeights) -> None:
    """Let Lightning's FSDPStrategy take meta modules: materialise their meta tensors without
    ``reset_parameters``; with a checkpoint (the policy whole on rank 0 only), broadcast rank 0's
    states (``sync_module_states``: GPUs only). A from-scratch policy is whole on every rank."""
    strategy.kwargs["param_init_fn"] = fsdp1_param_init()
    if weights.source is not None:
        strategy.kwargs["sync_module_states"] = True
