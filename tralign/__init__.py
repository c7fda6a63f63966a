"""tralign: Trust Region preference alignment.

``from tralign import train, evaluate`` gives the command modules, which are callable:
``train(overrides=["method=tr_dpo", "alpha=0.3"])`` returns the run's summary (see tralign/api.py).
"""

from importlib import import_module
from typing import Any

from tralign.runstamp import register as _register_resolvers

__version__ = "0.1.0"
__all__ = ["evaluate", "train"]

_register_resolvers()  # ${run_stamp:} in tralign/conf/train.yaml's run folder


def __getattr__(name: str) -> Any:
    # The module, never a function of the same name: `from tralign import train` is then one object
    # whether or not tralign.train was imported before (a submodule replaces a package attribute).
    if name in __all__:
        return import_module(f"tralign.{name}")
    raise AttributeError(f"module 'tralign' has no attribute {name!r}")
