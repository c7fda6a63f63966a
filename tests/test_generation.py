"""Sampling and the golden evaluation: seeded, EOS-trimmed, and the KL estimate checked by hand."""

from __future__ import annotations

import copy

import torch
from helpers.models import tiny_neox
from transformers import GPTNeoXForCausalLM

from tralign.data.synthetic import SyntheticTask
from tralign.eval.golden import golden_eval
from tralign.generation import completion_logps, sample

TASK = SyntheticTask()
TOKENIZER = TASK.build_tokenizer()
PROMPTS = [TASK.make_prompt(__import__("random").Random(i)) for i in range(6)]
CFG = {"n_prompts": 6, "max_new_tokens": 5, "temperature": 1.0, "top_p": 1.0, "batch_size": 4}


def _model(seed: int) -> GPTNeoXForCausalLM:
    return tiny_neox(
        seed,
        num_hidden_layers=1,
        max_position_embeddings=64,
        eos_token_id=TOKENIZER.eos_token_id,
        pad_token_id=TOKENIZER.pad_token_id,
        bos_token_id=TOKENIZER.eos_token_id,
    )


def test_sampling_is_seeded_and_trimmed_at_eos() -> None:
    model = _model(0)
    a = sample(model, TOKENIZER, PROMPTS, max_new_tokens=5, seed=3, batch_size=4)
    b = sample(model, TOKENIZER, PROMPTS, max_new_tokens=5, seed=3, batch_size=2)
    c = sample(model, TOKENIZER, PROMPTS, max_new_tokens=5, seed=4, batch_size=4)
    assert (
        a.completion_ids
        == sample(model, TOKENIZER, PROMPTS, max_new_tokens=5, seed=3, batch_size=4).completion_ids
    )
    assert a.completion_ids != c.completion_ids
    assert len(b.texts) == len(PROMPTS)
    eos = TOKENIZER.eos_token_id
    for ids in a.completion_ids:
        assert 1 <= len(ids) <= 5 and (eos not in ids or ids.index(eos) == len(ids) - 1)
    assert a.prompt_ids[0] == TOKENIZER(PROMPTS[0], add_special_tokens=False)["input_ids"]
    assert TOKENIZER.padding_side == "right"  # restored


def test_completion_logps_matches_a_direct_forward() -> None:
    model = _model(1)
    samples = sample(model, TOKENIZER, PROMPTS[:3], max_new_tokens=4, seed=0)
    got = completion_logps(model, samples, pad_id=TOKENIZER.pad_token_id, batch_size=2)
    for i in range(3):
        ids = torch.tensor([samples.prompt_ids[i] + samples.completion_ids[i]])
        logp = model(ids).logits.log_softmax(-1)[0]
        n_p = len(samples.prompt_ids[i])
        want = sum(logp[t - 1, ids[0, t]].item() for t in range(n_p, ids.shape[1]))
        torch.testing.assert_close(got[i].item(), want, rtol=1e-5, atol=1e-5)


def test_golden_eval_of_a_model_against_itself_has_zero_kl() -> None:
    model = _model(2)
    out = golden_eval(model, copy.deepcopy(model), TOKENIZER, TASK, PROMPTS, CFG, seed=0)
    assert out["golden_kl_init"] == 0.0
    assert out["golden_reward"] == out["golden_reward_init"]
    other = golden_eval(model, _model(5), TOKENIZER, TASK, PROMPTS, CFG, seed=0)
    assert other["golden_kl_init"] != 0.0
    assert other["golden_n_prompts"] == 6
