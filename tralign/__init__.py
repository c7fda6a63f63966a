"""tralign: Trust Region preference alignment."""

from tralign.api import evaluate, train
from tralign.runstamp import register as _register_resolvers

__version__ = "0.1.0"

__all__ = ["evaluate", "train"]

_register_resolvers()  # ${run_stamp:} in conf/train.yaml's run folder
