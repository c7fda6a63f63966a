"""AlignmentModule's AdamW: fused where torch has the kernel for every parameter, foreach otherwise,
and the fused step is the same update as the foreach one."""

from __future__ import annotations

import torch
from helpers.models import tiny_neox
from torch import nn

from tralign.module import adamw_kernel


def test_fused_for_plain_cpu_parameters_foreach_otherwise() -> None:
    assert adamw_kernel([nn.Parameter(torch.zeros(3))]) == {"fused": True}
    assert adamw_kernel([nn.Parameter(torch.zeros(3, device="meta"))]) == {"foreach": True}
    assert adamw_kernel([nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, device="meta"))]) == {
        "foreach": True
    }


def test_fused_step_equals_the_foreach_step() -> None:
    models = [tiny_neox(seed=3), tiny_neox(seed=3)]
    grads = [torch.randn_like(p) for p in models[0].parameters()]
    kwargs = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}
    optimizers = [
        torch.optim.AdamW(
            list(models[0].parameters()), **kwargs, **adamw_kernel(list(models[0].parameters()))
        ),
        torch.optim.AdamW(list(models[1].parameters()), **kwargs, foreach=True),
    ]
    assert optimizers[0].param_groups[0]["fused"]
    for _ in range(3):
        for model, optimizer in zip(models, optimizers, strict=True):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(next(models[0].parameters()), tiny_neox(seed=3).gpt_neox.embed_in.weight)
