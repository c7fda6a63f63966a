"""One prompt encoding for training, generation and evaluation: the tokenizer's own special prefix
(BOS for Llama-3-style tokenizers, nothing for Pythia), exactly once, also when a chat template
already writes BOS."""

from __future__ import annotations

from helpers.models import tiny_neox
from transformers import PreTrainedTokenizerFast

from tralign.data.formats.chat import chat_pair
from tralign.data.formats.fields import Tally
from tralign.data.tokenize import (
    Lengths,
    encode_columns,
    encode_prompt,
    encode_prompt_completions,
    encode_row,
    special_prefix,
)
from tralign.generation import sample

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "user:", "assistant:", "hello", "world", "red", "blue", "green"]
PAD, BOS, EOS = 0, 1, 2
ID = {w: i for i, w in enumerate(WORDS)}
CHAT = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def bos_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose own call prepends <s> (a TemplateProcessing post-processor, as
    Llama-3's tokenizer.json has); vocabulary < 32 so tiny_neox can generate with it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    backend = Tokenizer(models.WordLevel(vocab=ID, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def ids(text: str) -> list[int]:
    return [ID[w] for w in text.split()]


def test_bos_is_added_as_the_tokenizers_own_call_does():
    tok = bos_tokenizer()
    assert special_prefix(tok) == [BOS]
    assert encode_prompt(tok, "user: hello assistant:") == tok("user: hello assistant:")["input_ids"]
    prompt, (chosen, rejected), _ = encode_prompt_completions(
        tok, "hello world", [" red", " blue"], Lengths(16, 8)
    )
    assert prompt == [BOS, *ids("hello world")]
    assert (chosen, rejected) == (ids("red") + [EOS], ids("blue") + [EOS])


def test_empty_prompt_is_one_bos_so_the_first_completion_token_trains():
    tok = bos_tokenizer()
    example, _ = encode_row(tok, {"prompt": "", "completion": "red blue"}, Lengths(8, 4), mode="sft")
    assert example["prompt_ids"] == [BOS]  # not [BOS, BOS]: the prefix is the start token
    assert example["completion_ids"] == ids("red blue") + [EOS]


def test_a_chat_template_that_writes_bos_gets_no_second_one():
    tok = bos_tokenizer(CHAT)
    answers = {
        side: [{"role": "assistant", "content": word}]
        for side, word in (("chosen", "red"), ("rejected", "blue"))
    }
    row = chat_pair({"prompt": "hello", **answers}, tok, Tally())
    assert row["prompt"].startswith("<s>")
    assert tok(row["prompt"])["input_ids"][:2] == [BOS, BOS]  # what the naive call would train on
    example, _ = encode_row(tok, row, Lengths(16, 8), mode="pair")
    assert example["prompt_ids"] == [BOS, *ids("user: hello assistant:")]
    columns = encode_columns(tok, {k: [v] for k, v in row.items()}, Lengths(16, 8), mode="pair")
    assert columns["prompt_ids"] == [example["prompt_ids"]]


def test_truncation_keeps_bos_and_the_prompts_end():
    tok = bos_tokenizer()
    prompt = "red blue green hello world assistant:"
    lengths = Lengths(12, 4)
    example, truncated = encode_row(tok, {"prompt": prompt, "completion": "red"}, lengths, mode="sft")
    assert truncated and example["prompt_ids"] == [BOS, *ids("hello world assistant:")]
    columns = encode_columns(tok, {"prompt": [prompt], "completion": ["red"]}, lengths, mode="sft")
    assert columns["prompt_ids"] == [example["prompt_ids"]] and columns["truncated"] == [True]


def test_pythia_adds_no_bos(pythia):
    text = "\n\nHuman: What is a trust region?\n\nAssistant:"
    assert special_prefix(pythia) == []
    assert (
        encode_prompt(pythia, text)
        == pythia(text)["input_ids"]
        == pythia(text, add_special_tokens=False)["input_ids"]
    )
    assert encode_prompt(pythia, "") == [pythia.bos_token_id]  # the empty-prompt rule is unchanged


def test_generation_sees_the_prompt_ids_training_sees():
    tok = bos_tokenizer()
    prompts = ["user: hello assistant:", "user: red blue green assistant:", ""]
    train = encode_columns(tok, {"prompt": prompts, "completion": ["red"] * 3}, Lengths(16, 8), mode="sft")[
        "prompt_ids"
    ]
    samples = sample(tiny_neox(), tok, prompts, max_new_tokens=2, batch_size=2, seed=0)
    assert samples.prompt_ids == train
    assert all(p[0] == BOS and p.count(BOS) == 1 for p in train)
