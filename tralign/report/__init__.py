"""Sweep reports: ``python -m tralign.report <sweep dir>`` reads every job's ``summary.json`` (and
``eval.json``), writes ``results.csv``, ``results.md`` and PNG plots next to them.

``jobs`` reads the folders, ``table`` turns jobs into rows and writes CSV/Markdown, ``plots`` draws.
"""

from tralign.report.jobs import Job, expand_sweep, load_jobs
from tralign.report.table import build_rows

__all__ = ["Job", "build_rows", "expand_sweep", "load_jobs"]
