"""Anthropic HH-RLHF: rows ``{"chosen", "rejected"}``, each a whole dialogue
``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: <answer>"``.

Pairs. The prompt is the longest common prefix of the two dialogues that ends with
``"\\n\\nAssistant:"``; chosen and rejected are the rest of each, kept as they are (with their
leading space). For almost every row that is "the dialogue up to the last ``\\n\\nAssistant:``".

Deliberate cases, kept, counted in ``Split.counts`` and logged (numbers for the 2,312 rows of the
shared harmless-base test sample):
- ``hh_diverging`` (5 rows): the dialogues differ before the last assistant turn (one side has an
  extra turn, or they differ inside an earlier answer). Same rule: the prompt ends at the assistant
  turn where they first differ, and a continuation may hold further turns.
- ``hh_empty_answer`` (4 rows): one side's last answer is blank (``"...\\n\\nAssistant: "``: the
  assistant said nothing, and in these 4 rows that was preferred). Kept as it is, so the model
  learns to stop there.
Refused (bad rows): no shared ``"\\n\\nAssistant:"`` (the dialogues differ from the first human
turn), both answers blank, chosen identical to rejected, missing or non-string fields.

SFT (``data.sft=true``): the chosen dialogue alone; prompt = everything up to its last
``"\\n\\nAssistant:"``, completion = the last answer.
"""

from __future__ import annotations

import os
from typing import Any

from tralign.data.formats.fields import BadRow, Row, Tally, as_object, pair, text

ASSISTANT = "\n\nAssistant:"
DIVERGING = "hh_diverging"
EMPTY = "hh_empty_answer"
EMPTY_NOTE = "an answer is blank (the assistant said nothing); kept as it is"
DIVERGING_NOTE = (
    "dialogues diverge before the last assistant turn; prompt = their longest common prefix "
    "ending in '\\n\\nAssistant:'"
)


def split_dialogues(chosen: str, rejected: str) -> tuple[str, str, str, bool]:
    """(prompt, chosen answer, rejected answer, diverged early?) for two whole dialogues."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        raise BadRow(
            "chosen and rejected share no '\\n\\nAssistant:' turn (they differ before the first answer)"
        )
    end = cut + len(ASSISTANT)
    prompt, chosen_answer, rejected_answer = chosen[:end], chosen[end:], rejected[end:]
    if not chosen_answer.strip() and not rejected_answer.strip():
        raise BadRow("both answers are empty after the shared prompt")
    diverged = chosen.rfind(ASSISTANT) != cut or rejected.rfind(ASSISTANT) != cut
    return prompt, chosen_answer, rejected_answer, diverged


def hh_pair(obj: Any, tally: Tally) -> Row:
    obj = as_object(obj)
    chosen, rejected = text(obj, "chosen"), text(obj, "rejected")
    if chosen == rejected:
        raise BadRow("chosen and rejected are identical")
    prompt, chosen_answer, rejected_answer, diverged = split_dialogues(chosen, rejected)
    if diverged:
        tally.note(DIVERGING, DIVERGING_NOTE)
    if not chosen_answer.strip() or not rejected_answer.strip():
        tally.note(EMPTY, EMPTY_NOTE)
    return pair(prompt, chosen_answer, rejected_answer)


def hh_sft(obj: Any, tally: Tally) -> Row:
    dialogue = text(as_object(obj), "chosen")
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        raise BadRow("field 'chosen' has no '\\n\\nAssistant:' turn")
    end = cut + len(ASSISTANT)
    if not dialogue[end:].strip():
        tally.note(EMPTY, EMPTY_NOTE)
    return {"prompt": dialogue[:end], "completion": dialogue[end:]}
