"""One GPU acceptance command: ``python -m tralign.gpu_check [--out DIR] [--only NAME,...]``.

Runs, offline, on one CUDA GPU of 80 GB or more, in about 8 minutes:
- ``tr_dpo_300m_fsdp2_resume``: TR-DPO on a ~300M GPT-NeoX built from scratch, trainer=fsdp2
  devices=1, activation checkpointing, export.reference=true, 20 steps; then the same run resumed from
  its step-10 checkpoint. Pass: both finite and completed, exported weights within 1e-3, exports load.
- ``in_loop_audit``: the first run's :class:`~tralign.gpu_check.audit.AuditCallback` facts, plus a
  finite final validation.
- ``head_only_logprobs_bf16``: head-only log-probs against the full logits under bf16 autocast.
- ``scale_bench_1b_6.9b``: ``tralign.scale_bench`` for the 1B and 6.9B architectures.
- ``bench_pythia_160m_cuda``: ``tralign.bench device=cuda model=pythia-160m-arch``.

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (the table, also printed). Exit status: 0 all
passed, 1 any failed, 2 no CUDA device (one line on stderr).
"""
