"""Reddit TL;DR (Stiennon et al., 2020): human comparisons and reference summaries.

Prompt: ``"SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:"`` (the layout
of OpenAI's summarize-from-feedback and of TRL's TL;DR sets). Every summary becomes
``" " + text.strip()`` (one leading space after ``"TL;DR:"``), whichever layout it came in, so the same
comparison gives the same record from any of them.

Comparisons (:func:`tldr_pair`), two layouts, detected per row:
- canonical ``{"prompt", "chosen", "rejected"}`` strings; the prompt is kept as it is;
- OpenAI's ``{"info": {"post", "title", "subreddit", ...}, "summaries": [{"text"}, {"text"}],
  "choice": 0|1}`` (``openai/summarize_from_feedback``, config ``comparisons``); the prompt is built
  from ``info``. Rows whose ``info`` has an ``article`` and no ``post`` are CNN/DM news articles
  (part of that set's validation split), not Reddit posts: left out and counted (``tldr_cnndm``).

Reference summaries for SFT (:func:`tldr_sft`): ``{"prompt", "summary"}``,
``{"subreddit", "title", "post", "summary"}`` (the prompt is built) or ``{"prompt", "completion"}``
(TRL's ``trl-lib/tldr``) -> ``{"prompt", "completion"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tralign.data.formats.fields import BadRow, Row, Tally, as_object, lead, pair, text

PROMPT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
CNNDM = "tldr_cnndm"
CNNDM_NOTE = "CNN/DM article rows (not Reddit posts) left out"


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    return PROMPT.format(subreddit=subreddit, title=title, post=post)


def _prompt_from(obj: Mapping[str, Any], prefix: str = "") -> str:
    fields = {key: text(obj, key, name=prefix + key) for key in ("subreddit", "title", "post")}
    return tldr_prompt(**fields)


def tldr_pair(obj: Any, tally: Tally) -> Row | None:
    obj = as_object(obj)
    if "info" not in obj and "summaries" not in obj:
        prompt = text(obj, "prompt")
        return pair(prompt, lead(text(obj, "chosen")), lead(text(obj, "rejected")))
    return _openai_pair(obj, tally)


def _openai_pair(obj: Mapping[str, Any], tally: Tally) -> Row | None:
    info = obj.get("info")
    if not isinstance(info, Mapping):
        raise BadRow(f"field 'info' must be an object with post, title, subreddit, got {type(info).__name__}")
    if info.get("post") is None and isinstance(info.get("article"), str):
        tally.note(CNNDM, CNNDM_NOTE)
        return None
    prompt = _prompt_from(info, prefix="info.")
    summaries = obj.get("summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        got = f"{len(summaries)} item(s)" if isinstance(summaries, list) else type(summaries).__name__
        raise BadRow(f"field 'summaries' must be a list of 2 summaries, got {got}")
    texts = []
    for i, summary in enumerate(summaries):
        if not isinstance(summary, Mapping):
            raise BadRow(
                f"field 'summaries[{i}]' must be an object with 'text', got {type(summary).__name__}"
            )
        texts.append(text(summary, "text", name=f"summaries[{i}].text"))
    choice = obj.get("choice")
    if not isinstance(choice, int) or isinstance(choice, bool) or choice not in (0, 1):
        raise BadRow(f"field 'choice' must be 0 or 1, got {choice!r}")
    return pair(prompt, lead(texts[choice]), lead(texts[1 - choice]))


def tldr_sft(obj: Any, tally: Tally) -> Row:
    obj = as_object(obj)
    prompt = text(obj, "prompt") if "prompt" in obj else _prompt_from(obj)
    if "summary" in obj:
        key = "summary"
    elif "completion" in obj:
        key = "completion"
    else:
        raise BadRow("missing field 'summary' (or 'completion')")
    return {"prompt": prompt, "completion": lead(text(obj, key))}
