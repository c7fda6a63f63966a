"""Which ops a block of code runs: the audit's (and the tests') proof that the reference update is
in-place and shard-local (a collective would show as a ``c10d`` op)."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class OpRecorder(TorchDispatchMode):
    """Names of every aten/c10d op dispatched inside ``with OpRecorder() as ops:`` in ``ops.names``."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))
