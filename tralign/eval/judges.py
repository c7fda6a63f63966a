"""Judges behind one interface: ``judge_pairs(prompts, answers_a, answers_b) -> list[Judgment]``.

golden        the embedded task's known reward (tralign.data.synthetic), compared per pair
reward_model  any Hugging Face sequence-classification model, pairwise by score difference
api           an OpenAI-compatible chat-completions judge (tralign.eval.api_judge)

Outcomes are "a", "b", "tie" or "unparsable"; score-based judges call a tie when the scores are
within ``tie_tolerance`` of each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tralign.errors import TralignError
from tralign.eval.judgment import Judgment, Outcome


class Judge(Protocol):
    name: str

    def judge_pairs(
        self, prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> list[Judgment]: ...


def compare(score_a: float, score_b: float, tolerance: float) -> Outcome:
    if abs(score_a - score_b) <= tolerance:
        return "tie"
    return "a" if score_a > score_b else "b"


class ScoreJudge:
    """A judge that scores each answer on its own; subclasses implement ``scores``."""

    name = "score"

    def __init__(self, tie_tolerance: float = 0.0):
        self.tie_tolerance = float(tie_tolerance)

    def scores(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def judge_pairs(
        self, prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> list[Judgment]:
        sa, sb = self.scores(prompts, answers_a), self.scores(prompts, answers_b)
        return [Judgment(compare(a, b, self.tie_tolerance), a, b) for a, b in zip(sa, sb, strict=True)]


class GoldenJudge(ScoreJudge):
    name = "golden"

    def __init__(self, task: Any, tie_tolerance: float = 1e-9):
        super().__init__(tie_tolerance)
        self.task = task

    def scores(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        return [self.task.golden_reward(p, a) for p, a in zip(prompts, answers, strict=True)]


class RewardModelJudge(ScoreJudge):
    """Scores ``prompt + answer`` with a sequence-classification model's (last) logit."""

    name = "reward_model"

    def __init__(self, path: str, *, tie_tolerance: float = 0.0, batch_size: int = 16, device: str = "cpu"):
        super().__init__(tie_tolerance)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        except (OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise TralignError(
                f"judge.path={path}: could not load a sequence-classification model: {first}"
            ) from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # needed to find each row's last token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.device, self._torch = int(batch_size), device, torch

    def scores(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        texts = [p + a for p, a in zip(prompts, answers, strict=True)]
        out: list[float] = []
        with self._torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.batch_size], return_tensors="pt", padding=True
                ).to(self.device)
                out.extend(self.model(**enc).logits[:, -1].float().tolist())
        return out


def build_judge(judge_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> Judge:
    """The judge ``judge.name`` names; bad settings fail here, before any model is sampled."""
    from omegaconf import OmegaConf

    from tralign.safety import check_no_secrets

    # Keys come from the environment only (judge.api_key_env names the variable), never the config.
    plain = OmegaConf.to_container(judge_cfg) if OmegaConf.is_config(judge_cfg) else dict(judge_cfg)
    check_no_secrets({"judge": plain})
    name = judge_cfg.get("name")
    if name == "golden":
        from tralign.data.sources import synthetic_task

        if data_cfg.get("name") != "synthetic":
            raise TralignError(
                f"judge=golden needs data=synthetic (a known reward), got data={data_cfg.get('name')}"
            )
        return GoldenJudge(
            synthetic_task(data_cfg), tie_tolerance=float(judge_cfg.get("tie_tolerance", 1e-9))
        )
    if name == "reward_model":
        if not judge_cfg.get("path"):
            raise TralignError("judge=reward_model: set judge.path (a local folder or hub id)")
        return RewardModelJudge(
            str(judge_cfg["path"]),
            tie_tolerance=float(judge_cfg.get("tie_tolerance", 0.0)),
            batch_size=int(judge_cfg.get("batch_size", 16)),
            device=str(judge_cfg.get("device", "cpu")),
        )
    if name == "api":
        from tralign.eval.api_judge import ApiJudge

        return ApiJudge.from_config(judge_cfg, data_cfg)
    raise TralignError(f"judge.name: unknown judge {name!r}; valid: api, golden, reward_model")
