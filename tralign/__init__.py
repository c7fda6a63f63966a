"""tralign: Trust Region preference alignment."""

__version__ = "0.1.0"
