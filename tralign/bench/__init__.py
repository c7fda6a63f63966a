"""``python -m tralign.bench``: tralign against TRL's ``DPOTrainer(sync_ref_model=True)`` on the same
model, rows, batch and reference schedule; one table and ``throughput ratio tralign/trl: X.XX``.

Pieces: ``presets`` (GPT-NeoX architectures, random init, nothing downloaded), ``worker`` (one
framework's timed run, or the loss pre-check, in its own process so peak memory is its own),
``report`` (aggregation, the table, bench.json), ``__main__`` (prepare, pre-check, alternate, report).
"""
