"""Win-rate, interval and KL arithmetic on hand-made numbers and tiny models."""

from __future__ import annotations

import itertools
import math

import pytest
from helpers.models import tiny_neox

from tralign.data.synthetic import SyntheticTask
from tralign.eval.metrics import bootstrap_ci, combine_orders, mean_ci, sem, win_rate
from tralign.eval.samples import generate, kl_log_ratios, truncate_at
from tralign.generation import Samples, completion_logps


def test_all_wins_is_one_with_a_degenerate_interval():
    assert win_rate(["a"] * 10) | {} == {
        "win_rate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 10, "wins": 10, "losses": 0, "ties": 0, "unparsable": 0,
    }  # fmt: skip


def test_ties_count_half_and_unparsable_is_left_out():
    assert win_rate(["a", "a", "a", "b"])["win_rate"] == 0.75
    out = win_rate(["a", "tie", "b", "tie", "unparsable"])
    assert out["win_rate"] == 0.5 and out["n"] == 4 and out["ties"] == 2 and out["unparsable"] == 1
    assert math.isnan(win_rate(["unparsable"])["win_rate"])
    with pytest.raises(ValueError, match="unknown outcome"):
        win_rate(["A"])


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [1.0] * 30 + [0.0] * 10
    lo, hi = bootstrap_ci(values, seed=3)
    assert (lo, hi) == bootstrap_ci(values, seed=3)
    assert lo < 0.75 < hi
    # About mean ± 1.96 standard errors for a large sample.
    assert hi - lo == pytest.approx(2 * 1.96 * sem(values), rel=0.2)
    assert mean_ci([2.0, 4.0, None])["mean"] == 3.0 and mean_ci([2.0, 4.0])["sem"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "first, swapped, combined",
    [("a", "a", "a"), ("a", "b", "tie"), ("b", "b", "b"), ("unparsable", "b", "b"), ("a", "unparsable", "a"),
     ("unparsable", "unparsable", "unparsable"), ("tie", "a", "tie")],
)  # fmt: skip
def test_combine_orders(first, swapped, combined):
    assert combine_orders(first, swapped) == combined


def test_truncate_at_turn_marker():
    assert truncate_at(" Sure.\n\nHuman: more\n\nAssistant: x", ["\n\nHuman:", "\n\nAssistant:"]) == " Sure."
    assert truncate_at(" Sure.", ["\n\nHuman:"]) == " Sure."


def _tiny(path, tokenizer, seed):
    model = tiny_neox(seed, tokenizer=tokenizer, num_hidden_layers=1, initializer_range=0.5).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def test_kl_estimate_matches_brute_force_enumeration(tmp_path):
    """Two new tokens at most over a ~30-token vocabulary: every completion can be enumerated, so
    KL(π ‖ π_sft) = Σ_y π(y) (log π(y) − log π_sft(y)) is exact; the sample estimate must agree."""
    tokenizer = SyntheticTask().build_tokenizer()
    policy, sft = _tiny(tmp_path / "p", tokenizer, 0), _tiny(tmp_path / "s", tokenizer, 1)
    prompt = "Q: fox owl ->"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    eos, vocab = tokenizer.eos_token_id, range(len(tokenizer))
    seqs = [[eos]] + [[t, u] for t, u in itertools.product(vocab, vocab) if t != eos]
    samples = Samples([prompt_ids] * len(seqs), seqs, [""] * len(seqs))
    lp = completion_logps(policy, samples, pad_id=tokenizer.pad_token_id, batch_size=512)
    lq = completion_logps(sft, samples, pad_id=tokenizer.pad_token_id, batch_size=512)
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-4)  # the enumeration is complete
    exact = (lp.exp() * (lp - lq)).sum().item()
    assert exact > 0.05
    gen = {"max_new_tokens": 2, "temperature": 1.0, "top_p": 1.0, "seed": 0, "batch_size": 500}
    rows = generate(str(tmp_path / "p"), [prompt] * 2000, gen, [], cache_dir=tmp_path / "cache", device="cpu")
    ratios = kl_log_ratios(str(tmp_path / "p"), str(tmp_path / "s"), rows, batch_size=500, device="cpu")
    estimate = mean_ci(ratios)
    assert abs(estimate["mean"] - exact) < 4 * estimate["sem"]
    # Cached: the same settings give the same rows without sampling again.
    assert (
        generate(str(tmp_path / "p"), [prompt] * 2000, gen, [], cache_dir=tmp_path / "cache", device="cpu")
        == rows
    )
    assert len(list((tmp_path / "cache" / "generations").iterdir())) == 1
