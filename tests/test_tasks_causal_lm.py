"""Causal-LM own data: the three forms and their loss masks (hand-checked positions), every bad-data line, the
per-sequence loss against a float64 numpy reference, metrics, batches, and the built-in tasks' instruction form.
A tiny word-level tokenizer with a chat template is built here; every file is written here."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jax_adalora.tasks.causal_lm import (
    encode_causal_lm,
    find_form,
    load_causal_lm_file,
)
from jax_adalora.tasks.causal_lm_batches import CausalLMBatchIterator, left_padded
from jax_adalora.tasks.causal_lm_instructions import instruction_rows, instruction_split
from jax_adalora.tasks.causal_lm_metrics import causal_lm_losses, decode_completions, exact_match, lm_metrics
from jax_adalora.tasks.labelled_texts import LabelledRows
from jax_adalora.tasks.sources import TaskDataError

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]
WORDS = "hello world good bad review : the movie is positive negative be brief".split()
VOCAB = {t: i for i, t in enumerate(SPECIALS + WORDS)}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
BOS, EOS, USER, ASSISTANT, END = 1, 2, 4, 5, 6


def ids(text: str) -> list[int]:
    return [VOCAB[w] for w in text.split()]


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """Word-level, a BOS before every text it encodes with special tokens, and a chat template."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    inner.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_text_form_every_token_counts_and_overflow_is_truncated(tmp_path, tok):
    path = tmp_path / "docs.json"  # a .json list of records
    path.write_text(json.dumps([{"text": "the movie is good"}, {"text": "hello"}]))
    data = load_causal_lm_file(path, tok, max_seq_length=16)
    assert data.form == "text" and data.truncated == 0 and data.prompts == ()
    assert data.split.input_ids[0].tolist() == [BOS, *ids("the movie is good"), EOS]
    assert data.loss_mask[0].tolist() == [1, 1, 1, 1, 1, 0]
    assert data.split.input_ids[1].tolist() == [BOS, VOCAB["hello"], EOS, 0, 0, 0]
    assert data.loss_mask[1].tolist() == [1, 1, 0, 0, 0, 0]
    assert data.split.attention_mask[1].tolist() == [1, 1, 1, 0, 0, 0]
    short = load_causal_lm_file(path, tok, max_seq_length=4)
    assert short.split.input_ids[0].tolist() == [BOS, *ids("the movie is")]
    assert short.loss_mask[0].tolist() == [1, 1, 1, 0]
    assert short.truncated == 1 and short.summary()["truncated"] == 1


def test_prompt_completion_form_loss_on_completion_only(tmp_path, tok):
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"prompt": ["review : the movie", "hello"], "completion": ["good", "be brief"]}).to_csv(
        path, index=False
    )
    data = load_causal_lm_file(path, tok, max_seq_length=16)
    assert data.form == "prompt-completion"
    # <s> review : the movie | good </s>: positions 4 (predicts good) and 5 (predicts </s>) count
    assert data.split.input_ids[0, :7].tolist() == [BOS, *ids("review : the movie good"), EOS]
    assert data.loss_mask[0, :7].tolist() == [0, 0, 0, 0, 1, 1, 0]
    assert data.loss_mask[1, :5].tolist() == [0, 1, 1, 1, 0]
    assert data.prompts[0] == (BOS, *ids("review : the movie")) and data.references == ("good", "be brief")
    cut = load_causal_lm_file(path, tok, max_seq_length=6)
    assert cut.split.input_ids[0].tolist() == [BOS, *ids("review : the movie good")]
    assert cut.loss_mask[0].tolist() == [0, 0, 0, 0, 1, 0]
    assert cut.truncated == 1


def test_messages_form_loss_on_every_assistant_turn(tmp_path, tok):
    chat = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "good movie"},
        {"role": "user", "content": "bad"},
        {"role": "assistant", "content": "positive"},
    ]
    expected_ids = [USER, *ids("hello"), END, ASSISTANT, *ids("good movie"), END]
    expected_ids += [USER, *ids("bad"), END, ASSISTANT, *ids("positive"), END]
    # targets: good movie <|end|> (4, 5, 6) and positive <|end|> (11, 12); the mask sits one position earlier
    expected_mask = [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0]
    jsonl = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}])
    parquet = tmp_path / "chat.parquet"
    pd.DataFrame({"messages": [chat]}).to_parquet(parquet)
    csv = tmp_path / "chat.csv"
    pd.DataFrame({"messages": [json.dumps(chat)]}).to_csv(csv, index=False)
    for path in (jsonl, parquet, csv):
        data = load_causal_lm_file(path, tok, max_seq_length=32)
        assert data.form == "messages"
        assert data.split.input_ids[0].tolist() == expected_ids, path
        assert data.loss_mask[0].tolist() == expected_mask, path
        assert data.prompts[0] == tuple(expected_ids[:11]) and data.references == ("positive",)
    cut = load_causal_lm_file(jsonl, tok, max_seq_length=12)
    assert cut.loss_mask[0].tolist() == expected_mask[:11] + [0] and cut.truncated == 1


def error_line(call) -> str:
    with pytest.raises(TaskDataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_data_gets_one_line(tmp_path, tok):
    no_completion = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "hello"}])
    message = error_line(lambda: load_causal_lm_file(no_completion, tok, max_seq_length=8))
    assert str(no_completion) in message and "'completion' column" in message

    empty = write_jsonl(
        tmp_path / "b.jsonl", [{"prompt": "hello", "completion": "good"}, {"prompt": "a", "completion": " "}]
    )
    message = error_line(lambda: load_causal_lm_file(empty, tok, max_seq_length=8))
    assert message.startswith(f"{empty}, line 2:") and "empty 'completion'" in message

    long_prompt = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "the movie is good", "completion": "bad"}])
    message = error_line(lambda: load_causal_lm_file(long_prompt, tok, max_seq_length=5))
    assert message.startswith(f"{long_prompt}, line 1:") and "--max-seq-length 5" in message and "5 tokens" in message

    chat = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "assistant", "content": "hello"}]}])
    message = error_line(lambda: load_causal_lm_file(chat, make_tokenizer(None), max_seq_length=8))
    assert str(chat) in message and "chat template" in message

    unknown = tmp_path / "e.parquet"
    pd.DataFrame({"question": ["hello"], "answer": ["good"]}).to_parquet(unknown)
    message = error_line(lambda: load_causal_lm_file(unknown, tok, max_seq_length=8))
    assert str(unknown) in message and "'messages'" in message and "'text'" in message and "question" in message

    no_assistant = write_jsonl(tmp_path / "f.jsonl", [{"messages": [{"role": "user", "content": "hello"}]}])
    message = error_line(lambda: load_causal_lm_file(no_assistant, tok, max_seq_length=8))
    assert message.startswith(f"{no_assistant}, line 1:") and "'assistant'" in message

    empty_turn = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": ""}]
    empty_chat = write_jsonl(tmp_path / "g.jsonl", [{"messages": empty_turn}])
    assert "turn 2: empty assistant content" in error_line(
        lambda: load_causal_lm_file(empty_chat, tok, max_seq_length=8)
    )
    assert "columns: completion" in error_line(lambda: find_form(["completion"], "x.csv"))


def test_loss_matches_float64_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 11)).astype(np.float32) * 3
    input_ids = rng.integers(0, 11, size=(3, 6))
    loss_mask = np.array([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1]])  # last column never counts
    got = causal_lm_losses(
        jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), {"input_ids": input_ids, "loss_mask": loss_mask}
    )
    assert got.dtype == jnp.float32 and got.shape == (3,)
    reference = []
    x = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
    for b in range(3):
        terms = []
        for t in range(5):
            if loss_mask[b, t]:
                row = x[b, t]
                log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
                terms.append(log_z - row[input_ids[b, t + 1]])
        reference.append(np.mean(terms))
    np.testing.assert_allclose(np.asarray(got), reference, rtol=1e-5)


def test_metrics():
    result = lm_metrics([1.0, 3.0], [3, 1])
    assert result["loss"] == pytest.approx(2.0)
    assert result["perplexity"] == pytest.approx(np.exp(1.5))
    assert lm_metrics([1.0, 3.0])["perplexity"] == pytest.approx(np.exp(2.0))
    assert exact_match([" positive\n", "negative", "pos"], ["positive", " negative ", "positive"]) == pytest.approx(
        2 / 3
    )


def test_batches_generation_inputs_and_decoding(tmp_path, tok):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "hello", "completion": "good"}, {"prompt": "the movie is", "completion": "bad"}] * 2,
    )
    data = load_causal_lm_file(path, tok, max_seq_length=16)
    it = CausalLMBatchIterator(data, 3, shuffle=False, seed=0, bucket_lengths=(4,), pad_to_multiple_of=8)
    batches = list(it)
    assert "token_type_ids" not in batches[0] and batches[0]["loss_mask"].shape == (3, 8)
    assert batches[0]["loss_mask"][1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert batches[1]["loss_mask"][1].tolist() == data.loss_mask[3].tolist() + [0, 0]  # filler copies row 3
    assert batches[1]["example_mask"].tolist() == [1, 0, 0]
    prompt_ids, prompt_mask = left_padded(data.prompts[:2], 0)
    assert prompt_ids.tolist() == [[0, 0, BOS, VOCAB["hello"]], [BOS, *ids("the movie is")]]
    assert prompt_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert decode_completions(tok, [[VOCAB["good"], EOS, VOCAB["bad"]], [VOCAB["be"], VOCAB["brief"], 0]]) == [
        "good",
        "be brief",
    ]


def test_instruction_form_of_builtin_tasks(tok):
    rows = instruction_rows("movie-sentiment", ["a  warm film", "dull"], [1, 0], ("negative", "positive"))
    assert rows == {
        "prompt": ["Review: a warm film\nSentiment:", "Review: dull\nSentiment:"],
        "completion": [" positive", " negative"],
    }
    subjective = instruction_rows("subjectivity", ["he moves to paris"], np.array([0]), ("objective", "subjective"))
    assert subjective["completion"] == [" objective"] and subjective["prompt"][0].startswith("Sentence: he moves")
    with pytest.raises(ValueError, match="no instruction form for task 'sst2'"):
        instruction_rows("sst2", ["x"], [0], ("a", "b"))
    import datasets

    split = LabelledRows(datasets.Dataset.from_dict({"sentence": ["the movie", "bad"]}), np.array([1, 0]), "dev")
    data = instruction_split("movie-sentiment", split, ("negative", "positive"), tok, max_seq_length=16)
    assert data.form == "prompt-completion" and data.references == (" positive", " negative")
    # <s> Review: the movie Sentiment: | positive </s>  (Review: and Sentiment: are unknown words)
    assert data.split.input_ids[0, :7].tolist() == [BOS, 3, *ids("the movie"), 3, VOCAB["positive"], EOS]
    assert data.loss_mask[0, :7].tolist() == [0, 0, 0, 0, 1, 1, 0]
    too_short = lambda: instruction_split("movie-sentiment", split, ("negative", "positive"), tok, max_seq_length=3)  # noqa: E731
    assert error_line(too_short).startswith("movie-sentiment (dev), row 0:")


def test_encode_rejects_unknown_form(tok):
    with pytest.raises(ValueError, match="form 'chat'"):
        encode_causal_lm({"text": ["hello"]}, "chat", tok, max_seq_length=8, origin="x")


def test_instruction_form_cuts_long_sentences(tok):
    """A sentence too long for the maximum length is cut so that the label word and EOS still fit (as the encoder
    tasks truncate); the completion is never lost."""
    import datasets

    long = " ".join(["good"] * 40)
    split = LabelledRows(datasets.Dataset.from_dict({"sentence": [long, "bad"]}), np.array([1, 0]), "dev")
    data = instruction_split("movie-sentiment", split, ("negative", "positive"), tok, max_seq_length=16)
    assert data.truncated == 1
    first = data.split.input_ids[0, : data.split.lengths[0]].tolist()
    assert len(first) <= 16 and first[-2:] == [VOCAB["positive"], EOS]
    assert data.loss_mask[0].sum() == 2  # the label word and EOS
