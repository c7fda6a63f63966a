"""Chat rows: messages ``[{"role", "content"}, ...]`` rendered to a prompt string and a completion.

Preference rows in any of the usual layouts (UltraFeedback / TRL):
- ``chosen``/``rejected`` are whole conversations that end with the assistant's answer (the user
  turns included; a ``prompt`` field, if any, is then ignored): the prompt conversation is
  everything before the last message, and must be the same on both sides;
- ``chosen``/``rejected`` hold only the answer (one assistant message): the prompt conversation is
  ``prompt``, a list of messages or a string (one user message).

Rendering. With a tokenizer that has a chat template: prompt =
``tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)`` and the
completion is the answer's content as it is (the tokenisation step appends EOS). Without one, the
plain template of HH-RLHF: a system message's text first, then ``"\\n\\nHuman: <user>"`` and
``"\\n\\nAssistant: <assistant>"`` per turn (contents stripped), ending ``"\\n\\nAssistant:"``; the
completion is ``" " + answer.strip()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tralign.data.formats.fields import BadRow, Row, Tally, as_object, lead, pair, text

PLAIN_ROLES = {"user": "\n\nHuman: ", "assistant": "\n\nAssistant: "}
TEMPLATE = "chat_template"
TEMPLATE_NOTE = "chat rows rendered with the tokenizer's chat template"
PLAIN = "chat_plain"
PLAIN_NOTE = "chat rows rendered with the plain '\\n\\nHuman: ... \\n\\nAssistant:' template (no tokenizer chat template)"


def is_chat(obj: Mapping[str, Any], fields: tuple[str, ...]) -> bool:
    return any(isinstance(obj.get(key), list) for key in fields)


def has_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def messages(obj: Mapping[str, Any], key: str) -> list[dict[str, str]]:
    value = obj.get(key)
    if key not in obj:
        raise BadRow(f"missing field {key!r}")
    if not isinstance(value, list) or not value:
        raise BadRow(f"field {key!r} must be a non-empty list of messages, got {_describe(value)}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise BadRow(f"{key}[{i}] must be a message {{role, content}}, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise BadRow(
                f"{key}[{i}] needs string 'role' and 'content', got {type(role).__name__}, {type(content).__name__}"
            )
        out.append({"role": role, "content": content})
    return out


def _describe(value: Any) -> str:
    return "an empty list" if value == [] else type(value).__name__


def _answer(conversation: list[dict[str, str]], key: str) -> str:
    last = conversation[-1]
    if last["role"] != "assistant":
        raise BadRow(f"{key}: the last message must be the assistant's answer, got role {last['role']!r}")
    if not last["content"].strip():
        raise BadRow(f"{key}: the assistant's answer is empty")
    return last["content"]


def _prompt_conversation(obj: Mapping[str, Any]) -> list[dict[str, str]]:
    if isinstance(obj.get("prompt"), list):
        return messages(obj, "prompt")
    return [{"role": "user", "content": text(obj, "prompt")}]


def render_prompt(conversation: list[dict[str, str]], tokenizer: Any, tally: Tally) -> str:
    """The prompt text for ``conversation`` (the turns before the answer); notes the template used."""
    if not conversation:
        raise BadRow("no conversation before the answer")
    if conversation[-1]["role"] == "assistant":
        raise BadRow("the conversation before the answer ends with an assistant message")
    if not has_template(tokenizer):
        tally.note(PLAIN, PLAIN_NOTE)
        return plain_prompt(conversation)
    tally.note(TEMPLATE, TEMPLATE_NOTE)
    try:
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # jinja's TemplateError, or whatever the template raises itself
        raise BadRow(f"the chat template refused it ({type(err).__name__}: {err})") from None


def completion_text(answer: str, tokenizer: Any) -> str:
    # A chat template's generation prompt ends where the answer starts; the plain template needs
    # the HH convention of one leading space after "Assistant:".
    return answer if has_template(tokenizer) else lead(answer)


def plain_prompt(conversation: list[dict[str, str]]) -> str:
    parts = []
    for message in conversation:
        role, content = message["role"], message["content"].strip()
        if role == "system":
            parts.append(content)
        elif role in PLAIN_ROLES:
            parts.append(PLAIN_ROLES[role] + content)
        else:
            raise BadRow(f"unknown role {role!r} (the plain template knows system, user, assistant)")
    return "".join(parts) + PLAIN_ROLES["assistant"].rstrip()


def chat_pair(obj: Any, tokenizer: Any, tally: Tally) -> Row:
    obj = as_object(obj)
    chosen, rejected = messages(obj, "chosen"), messages(obj, "rejected")
    chosen_answer, rejected_answer = _answer(chosen, "chosen"), _answer(rejected, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise BadRow("chosen and rejected differ before their final answer")
    prompt = render_prompt(chosen[:-1] or _prompt_conversation(obj), tokenizer, tally)
    chosen_text, rejected_text = (completion_text(a, tokenizer) for a in (chosen_answer, rejected_answer))
    return pair(prompt, chosen_text, rejected_text)


def chat_completion(obj: Any, tokenizer: Any, tally: Tally) -> tuple[str, str]:
    """(prompt, completion) of a single-answer chat row: ``completion`` is a message list ending in
    the answer (earlier messages, if any, are the conversation) and ``prompt`` as in :func:`chat_pair`."""
    obj = as_object(obj)
    if isinstance(obj.get("completion"), list):
        conversation = messages(obj, "completion")
        answer = _answer(conversation, "completion")
        before = conversation[:-1]
    else:
        answer, before = text(obj, "completion"), []
    prompt = render_prompt(before or _prompt_conversation(obj), tokenizer, tally)
    return prompt, completion_text(answer, tokenizer)
