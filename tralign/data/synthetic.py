"""The embedded synthetic preference task: text pairs with a known golden reward.

``python -m tralign.train`` with no arguments aligns a tiny model on this task, offline and on a
CPU, so the whole pipeline (text -> tokenizer -> collate -> loss -> moving reference) runs without
downloads, and the *true* quality of the policy's samples can be measured with
:meth:`SyntheticTask.golden_reward` instead of a judge.

The world
    A content vocabulary of ``n_words`` short English words (colours, animals, ...). Each word has
    a fixed score in [-1, 1], set by ``SyntheticTask.seed``: the scores are the evenly spaced
    values ``-1, ..., +1`` in a seeded random order, so they average exactly 0 and the best word
    scores exactly +1.

Prompts and completions (plain text, whitespace-separated words)
    prompt      ``"Q: fox owl ->"``   (``n_keys`` distinct content words, the *keys*)
    completion  ``" red fox blue"``   (leading space, so ``prompt + completion`` reads naturally and
                                      tokenises to ``ids(prompt) + ids(completion)``)

The golden reward (see :meth:`SyntheticTask.golden_reward` for the exact rules) is the mean
per-word score of the completion, where copying a prompt key counts as a perfect word, plus the
fraction of the prompt's keys the completion contains. It depends only on which words occur, so a
2-layer transformer can learn it from a few hundred DPO steps; it is a mean, so padding an answer
out to the maximum length is not rewarded by itself.

Determinism: every random choice comes from a ``random.Random`` seeded with an int or a fixed
string (string seeds are hashed with SHA-512 by ``random``, never with the salted built-in
``hash``), so the same arguments give the same rows in every process.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is slow to import; only build_tokenizer needs it at run time.
    import transformers

SPECIAL_TOKENS = {"pad": "<pad>", "eos": "<eos>", "unk": "<unk>"}

PROMPT_PREFIX = "Q:"
PROMPT_SUFFIX = "->"
TEMPLATE_WORDS = (PROMPT_PREFIX, PROMPT_SUFFIX)

GOLDEN_REWARD_MIN = -1.0
GOLDEN_REWARD_MAX = 2.0

# Candidates drawn from the behaviour distribution per SFT row; the best one is kept. Small on
# purpose: the warm start should be clearly better than random but leave room for alignment.
SFT_BEST_OF = 2

# Upper bound of the per-completion probability of copying a key in the behaviour distribution.
# Drawn per completion so that pairs differ in coverage as well as in word scores.
BEHAVIOUR_MAX_KEY_RATE = 0.5

# Lower-case, one token each, none equal to a template word or special token. The task uses the
# first ``n_words`` in this order, so the default 24 are 12 colours and 12 animals.
_WORD_POOL: tuple[str, ...] = (
    # colours
    "red", "blue", "green", "gold", "pink", "grey", "black", "white", "brown", "tan", "teal", "plum",
    # animals
    "fox", "owl", "cat", "dog", "bee", "ant", "elk", "yak", "cow", "pig", "hen", "bat",
    "eel", "emu", "ape", "ram", "gnu", "cod", "jay", "asp", "boar", "crab", "deer", "frog",
    # nature
    "sun", "moon", "star", "rain", "snow", "wind", "tree", "leaf", "rock", "sand", "lake", "hill",
)  # fmt: skip

MAX_WORDS = len(_WORD_POOL)


@functools.lru_cache(maxsize=64)
def _world(seed: int, n_words: int) -> dict[str, float]:
    """Word -> score; cached because golden_reward is called once per sample."""
    words = _WORD_POOL[:n_words]
    values = [-1.0 + 2.0 * i / (n_words - 1) for i in range(n_words)]
    # A namespaced string seed keeps the world independent of data seeds that happen to be equal.
    random.Random(f"tralign.synthetic/world/{seed}").shuffle(values)
    return dict(zip(words, values, strict=True))


def _sigmoid(x: float) -> float:
    """Logistic function that does not overflow for large |x| (e.g. T -> 0)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class SyntheticTask:
    """A synthetic preference task whose true reward is known (see the module docstring).

    ``seed`` fixes the world (the word scores) only; which prompts and completions are drawn is set
    by the ``seed`` argument of :meth:`preference_rows` / :meth:`sft_rows`, so two tasks with
    different worlds see the same prompts and completions for the same data seed, only labelled
    differently.
    """

    seed: int = 0  # fixes the word scores (the "world"); independent of the data sampling seed
    n_words: int = 24  # content vocabulary size
    n_keys: int = 2  # key words per prompt
    min_len: int = 2  # completion length range in words
    max_len: int = 8
    # Bradley-Terry noise when labelling pairs (0 = always the higher golden reward)
    label_temperature: float = 0.25

    def __post_init__(self) -> None:
        if not 2 <= self.n_words <= MAX_WORDS:
            raise ValueError(f"n_words must be in [2, {MAX_WORDS}], got {self.n_words}")
        if not 0 <= self.n_keys <= self.n_words:
            raise ValueError(f"n_keys must be in [0, n_words={self.n_words}], got {self.n_keys}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"need 1 <= min_len <= max_len, got min_len={self.min_len}, max_len={self.max_len}"
            )
        if not (self.label_temperature >= 0 and math.isfinite(self.label_temperature)):
            raise ValueError(f"label_temperature must be finite and >= 0, got {self.label_temperature}")

    # ----------------------------------------------------------------- the world

    def words(self) -> list[str]:
        """The content vocabulary: the first ``n_words`` of a fixed list of short English words."""
        return list(_WORD_POOL[: self.n_words])

    def word_scores(self) -> dict[str, float]:
        """Score of each content word, in [-1, 1]; a function of (seed, n_words) only.

        The scores are ``-1 + 2 i / (n_words - 1)`` for ``i = 0 .. n_words - 1`` in a seeded random
        order: they average exactly 0, exactly one word scores +1 and one scores -1.
        """
        return dict(_world(self.seed, self.n_words))

    def prompt_keys(self, prompt: str) -> list[str]:
        """The distinct content words of ``prompt``, in order of first appearance.

        For prompts from :meth:`make_prompt` these are exactly its ``n_keys`` keys; any other text
        is read the same way (template words and unknown words are not keys).
        """
        vocab = _world(self.seed, self.n_words)
        keys: list[str] = []
        for token in prompt.split():
            if token in vocab and token not in keys:
                keys.append(token)
        return keys

    # ----------------------------------------------------------------- sampling

    def make_prompt(self, rng: random.Random) -> str:
        """``"Q: <key_1> ... <key_n_keys> ->"`` with distinct keys drawn uniformly from ``words()``."""
        keys = rng.sample(self.words(), self.n_keys)
        return " ".join([PROMPT_PREFIX, *keys, PROMPT_SUFFIX])

    def sample_completion(self, prompt: str, rng: random.Random) -> str:
        """One completion from the behaviour distribution that the pairs are built from.

        Length uniform in [min_len, max_len]; a key rate ``q ~ U(0, BEHAVIOUR_MAX_KEY_RATE)`` is
        drawn per completion, then each word is a uniformly chosen prompt key with probability q
        and a uniformly chosen content word otherwise. Returned as ``" w1 w2 ..."`` (leading space).
        """
        keys = self.prompt_keys(prompt)
        words = self.words()
        length = rng.randint(self.min_len, self.max_len)
        key_rate = rng.uniform(0.0, BEHAVIOUR_MAX_KEY_RATE) if keys else 0.0
        out = [rng.choice(keys) if rng.random() < key_rate else rng.choice(words) for _ in range(length)]
        return " " + " ".join(out)

    def oracle_completion(self, prompt: str) -> str:
        """A completion with the maximal golden reward (2.0): the prompt's keys, then the best word.

        The best word makes the answer reach ``min_len`` words only when needed, and gives a
        keyless prompt a non-empty answer; it never lowers the reward since it scores +1.
        """
        scores = _world(self.seed, self.n_words)
        best = max(scores, key=scores.__getitem__)
        out = self.prompt_keys(prompt)
        while len(out) < max(self.min_len, 1):
            out.append(best)
        return " " + " ".join(out)

    # ----------------------------------------------------------------- reward

    def golden_reward(self, prompt: str, completion: str) -> float:
        """The true reward of ``completion`` for ``prompt``, defined for any strings; in [-1, 2].

        Exact rules:

        1. Keep the text before the first ``"<eos>"`` (if any), split it on whitespace, and drop
           ``"<pad>"`` tokens (both are artefacts of decoding a padded batch without
           ``skip_special_tokens``). Call the remaining tokens ``w_1 .. w_m``. Matching is exact
           and case-sensitive: ``"Fox"`` and ``"fox."`` are unknown words.
        2. If ``m == 0`` (empty answer) the reward is -1.
        3. ``K`` = the prompt's keys (:meth:`prompt_keys`). Per-token score:
           ``s(w) = +1`` if ``w`` is in ``K``; else ``word_scores()[w]`` for a content word; else -1
           (unknown words, template words ``"Q:"``/``"->"``, ``"<unk>"``, punctuation, ...).
        4. ``quality  = (s(w_1) + ... + s(w_m)) / m``                                   in [-1, 1]
           ``coverage = |K ∩ {w_1 .. w_m}| / |K|``  (1 if ``K`` is empty)               in [0, 1]
           ``reward   = quality + coverage``                                           in [-1, 2]

        So the maximum 2 is reached exactly by answers made only of prompt keys (all of them) and
        +1 words, e.g. :meth:`oracle_completion`. Being a mean, ``quality`` does not grow with
        length: appending words can only pull it towards their own scores.
        """
        text = completion.split(SPECIAL_TOKENS["eos"], 1)[0]
        tokens = [t for t in text.split() if t != SPECIAL_TOKENS["pad"]]
        if not tokens:
            return GOLDEN_REWARD_MIN
        scores = _world(self.seed, self.n_words)
        keys = self.prompt_keys(prompt)
        key_set = set(keys)
        quality = sum(1.0 if t in key_set else scores.get(t, -1.0) for t in tokens) / len(tokens)
        coverage = len(key_set.intersection(tokens)) / len(keys) if keys else 1.0
        return quality + coverage

    # ----------------------------------------------------------------- datasets

    def preference_rows(self, n: int, seed: int) -> list[dict[str, str]]:
        """``n`` rows ``{"prompt", "chosen", "rejected"}``; deterministic in (task, n, seed).

        Each row: a prompt from :meth:`make_prompt`, two completions ``a != b`` from
        :meth:`sample_completion` (``b`` is redrawn until it differs), and a Bradley-Terry label:
        ``a`` is chosen with probability ``sigmoid((r(a) - r(b)) / T)``, ``r`` the golden reward and
        ``T = label_temperature``. With ``T = 0`` the higher-reward answer is always chosen (a fair
        coin on ties). The label draw is made for every row whatever ``T`` is, so tasks differing
        only in ``T`` (or ``seed``) get identical prompts and completion pairs, labelled differently.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"tralign.synthetic/preference/{int(seed)}")
        rows: list[dict[str, str]] = []
        for _ in range(n):
            prompt = self.make_prompt(rng)
            a = self.sample_completion(prompt, rng)
            b = self.sample_completion(prompt, rng)
            while b == a:  # terminates: n_words >= 2 makes at least two completions possible
                b = self.sample_completion(prompt, rng)
            p_a = self._p_first_preferred(self.golden_reward(prompt, a), self.golden_reward(prompt, b))
            chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return rows

    def sft_rows(self, n: int, seed: int) -> list[dict[str, str]]:
        """``n`` rows ``{"prompt", "completion"}`` for an SFT warm start; deterministic in (task, n, seed).

        The completion is the best (highest golden reward, first on ties) of ``SFT_BEST_OF``
        behaviour samples: clearly better than the behaviour distribution, well short of the
        oracle, so preference training still has something to improve.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"tralign.synthetic/sft/{int(seed)}")
        rows: list[dict[str, str]] = []
        for _ in range(n):
            prompt = self.make_prompt(rng)
            candidates = [self.sample_completion(prompt, rng) for _ in range(SFT_BEST_OF)]
            best = max(candidates, key=lambda c: self.golden_reward(prompt, c))
            rows.append({"prompt": prompt, "completion": best})
        return rows

    def _p_first_preferred(self, r_first: float, r_second: float) -> float:
        """Bradley-Terry probability that the first answer is labelled chosen."""
        diff = r_first - r_second
        if self.label_temperature == 0:
            return 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
        return _sigmoid(diff / self.label_temperature)

    # ----------------------------------------------------------------- tokenizer

    def build_tokenizer(self) -> transformers.PreTrainedTokenizerFast:
        """A word-level fast tokenizer covering everything this task writes.

        Vocabulary, in this order (so ids are deterministic): ``<pad>`` = 0, ``<eos>`` = 1,
        ``<unk>`` = 2, the template words ``"Q:"``, ``"->"``, then :meth:`words`. Text is split on
        whitespace; anything else maps to ``<unk>``. No special tokens are added on encode (the
        collate path appends ``<eos>`` itself); decode joins tokens with single spaces, so
        ``decode(encode(text)) == " ".join(text.split())``. ``model_max_length`` is 128, well above
        the longest prompt plus completion. Saves with ``save_pretrained`` and reloads offline with
        ``AutoTokenizer.from_pretrained``.
        """
        import transformers
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        tokens = [
            SPECIAL_TOKENS["pad"],
            SPECIAL_TOKENS["eos"],
            SPECIAL_TOKENS["unk"],
            *TEMPLATE_WORDS,
            *self.words(),
        ]
        vocab = {tok: i for i, tok in enumerate(tokens)}
        backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # WordPiece joins tokens with spaces; with no "##" tokens in the vocabulary and cleanup
        # off it does nothing else (cleanup would glue punctuation such as " ." to the word before).
        backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=backend,
            pad_token=SPECIAL_TOKENS["pad"],
            eos_token=SPECIAL_TOKENS["eos"],
            unk_token=SPECIAL_TOKENS["unk"],
            model_max_length=128,
            clean_up_tokenization_spaces=False,
        )


def batch_golden_reward(
    task: SyntheticTask, prompts: Sequence[str], completions: Sequence[str]
) -> list[float]:
    """``[task.golden_reward(p, c) for p, c in zip(prompts, completions)]``; lengths must match."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [task.golden_reward(p, c) for p, c in zip(prompts, completions, strict=True)]
