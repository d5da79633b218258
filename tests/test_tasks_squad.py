"""SQuAD: official JSON and flat files, windows with answer labels, post-processing, metrics, bad input."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from tiny_assets import minilm_dir

from jax_adalora.tasks import TaskDataError, get_task_spec, load_task
from jax_adalora.tasks.squad import load_squad_splits, read_squad_file
from jax_adalora.tasks.squad_features import encode_squad, postprocess_qa

# 20 one-token words; the answer "Green  Music Paper" (context tokens 6..8, two spaces kept) straddles
# the boundary of the first window. With a 5-token question, 16 tokens leave 8 for context; a stride of 3
# gives windows over context tokens [0, 7], [5, 12], [10, 17], [15, 19].
CONTEXT = (
    "apple river stone cloud tiger house Green  Music Paper light water "
    "table chair dream smile horse bread glass money sleep"
)
ANSWER = "Green  Music Paper"
QUESTION = "Which words are named?"
MAX_LEN, STRIDE = 16, 3
WINDOWS = [(0, 7), (5, 12), (10, 17), (15, 19)]


def squad_json(path, qas, *, version="1.1", context=CONTEXT):
    data = {"version": version, "data": [{"title": "Words", "paragraphs": [{"context": context, "qas": qas}]}]}
    path.write_text(json.dumps(data, indent=1))
    return path


def qa(qid, answers=(), *, question=QUESTION, impossible=None):
    item = {"id": qid, "question": question, "answers": [{"text": t, "answer_start": s} for t, s in answers]}
    if impossible is not None:
        item["is_impossible"] = impossible
    return item


START = CONTEXT.index(ANSWER)
V1 = [qa("q-words", [(ANSWER, START), ("Music Paper", CONTEXT.index("Music"))]), qa("q-apple", [("apple", 0)])]
V2 = [
    qa("q-words", [(ANSWER, START)], impossible=False),
    {**qa("q-none", impossible=True), "plausible_answers": [{"text": "tiger", "answer_start": 24}]},
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def test_official_json_and_flat_records(tmp_path):
    spec = get_task_spec("squad")
    examples = read_squad_file(spec, squad_json(tmp_path / "v1.json", V1))
    assert [e.id for e in examples] == ["q-words", "q-apple"]
    assert examples[0].answers == (ANSWER, "Music Paper") and examples[0].answer_starts[0] == START
    assert examples[0].title == "Words" and not examples[0].is_impossible
    flat = tmp_path / "v1.jsonl"
    rows = [
        {"id": e.id, "title": e.title, "question": e.question, "context": e.context,
         "answers": {"text": list(e.answers), "answer_start": list(e.answer_starts)}}
        for e in examples
    ]  # fmt: skip
    flat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_squad_file(spec, flat) == examples
    v2 = read_squad_file(get_task_spec("squad_v2"), squad_json(tmp_path / "v2.json", V2, version="v2.0"))
    assert v2[1].is_impossible and v2[1].answers == ()


def test_windows_label_the_answer_or_cls(tmp_path, tokenizer):
    examples = read_squad_file(get_task_spec("squad"), squad_json(tmp_path / "v1.json", V1[:1]))
    split = encode_squad(tokenizer, examples, max_seq_length=MAX_LEN, doc_stride=STRIDE)
    assert len(split) == len(WINDOWS) and split.fixed_length
    assert split.feature_to_example.tolist() == [0, 0, 0, 0]
    first_context_token = 1 + 5 + 1  # [CLS] question [SEP]
    for row, (lo, hi) in enumerate(WINDOWS):
        context_tokens = np.flatnonzero(split.offsets[row, :, 0] >= 0)
        assert context_tokens.tolist() == list(range(first_context_token, first_context_token + hi - lo + 1))
    # Window 0 holds "green music" but not "paper": CLS. Window 1 holds all of it.
    assert split.start_positions.tolist() == [0, first_context_token + 1, 0, 0]
    assert split.end_positions.tolist() == [0, first_context_token + 3, 0, 0]
    s, e = split.start_positions[1], split.end_positions[1]
    assert tokenizer.decode(split.input_ids[1, s : e + 1]) == "green music paper"
    assert CONTEXT[split.offsets[1, s, 0] : split.offsets[1, e, 1]] == ANSWER
    assert split.input_ids.shape == (4, MAX_LEN) and split.lengths.tolist() == [16, 16, 16, 13]


def _logits(split, spans, *, width=None, cls=-5.0):
    """Logits (F, width): low everywhere, ``cls`` at CLS, and (start, end, value) per feature in ``spans``."""
    width = width or split.width
    start = np.full((len(split), width), -10.0, np.float32)
    end = start.copy()
    start[:, 0] = end[:, 0] = cls
    for row, (s, e, value) in spans.items():
        start[row, s], end[row, e] = value, value
    return start, end


def test_postprocess_maps_back_to_the_original_text(tmp_path, tokenizer):
    examples = read_squad_file(get_task_spec("squad"), squad_json(tmp_path / "v1.json", V1[:1]))
    split = encode_squad(tokenizer, examples, max_seq_length=MAX_LEN, doc_stride=STRIDE)
    gold = (int(split.start_positions[1]), int(split.end_positions[1]))
    start, end = _logits(split, {1: (*gold, 5.0), 3: (8, 8, 2.0)}, width=20)  # wider than the split: ignored
    start[2, 1], end[2, 0] = 50.0, 50.0  # question token and an end before the start: never valid
    predictions, odds = postprocess_qa(examples, split, start, end, with_negative=False)
    assert predictions == {"q-words": ANSWER} and odds == {"q-words": 0.0}
    predictions, _ = postprocess_qa(examples, split, start, end, with_negative=False, max_answer_length=2)
    assert predictions == {"q-words": "bread"}  # the 3-token gold is too long now; the decoy wins
    with pytest.raises(ValueError, match="expected start and end logits of shape"):
        postprocess_qa(examples, split, start[:2], end[:2], with_negative=False)


def test_v2_unanswerable_and_null_score(tmp_path, tokenizer):
    spec = get_task_spec("squad_v2")
    examples = read_squad_file(spec, squad_json(tmp_path / "v2.json", V2))
    split = encode_squad(tokenizer, examples, max_seq_length=MAX_LEN, doc_stride=STRIDE)
    assert split.feature_to_example.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert split.start_positions[4:].tolist() == [0, 0, 0, 0] and split.end_positions[4:].tolist() == [0, 0, 0, 0]
    gold = (int(split.start_positions[1]), int(split.end_positions[1]))
    # q-words: span 5+5=10 beats null -5-5=-10. q-none: a weak span 1+1=2 loses to a null of 3+3=6.
    start, end = _logits(split, {1: (*gold, 5.0), 5: (9, 9, 1.0)})
    start[4:, 0] = end[4:, 0] = 3.0
    predictions, odds = postprocess_qa(examples, split, start, end, with_negative=True)
    assert predictions == {"q-words": ANSWER, "q-none": ""}
    assert odds["q-words"] == pytest.approx(-10 - 10) and odds["q-none"] == pytest.approx(6 - 2)
    predictions, _ = postprocess_qa(examples, split, start, end, with_negative=True, null_score_diff_threshold=5.0)
    assert predictions["q-none"] == "Music"


def test_load_task_and_evaluate(tmp_path, tokenizer):
    train = squad_json(tmp_path / "train.json", V2, version="v2.0")
    dev = squad_json(tmp_path / "dev.json", V2, version="v2.0")
    data = load_task(
        "squad_v2",
        tokenizer=tokenizer,
        train_file=train,
        validation_file=dev,
        max_seq_length=MAX_LEN,
        doc_stride=STRIDE,
    )
    split = data.evals["validation"]
    assert data.spec.main_metric == "f1" and len(data.train) == 8 and len(split) == 8
    gold = (int(split.start_positions[1]), int(split.end_positions[1]))
    start, end = _logits(split, {1: (*gold, 5.0)})
    start[4:, 0] = end[4:, 0] = 3.0
    result = data.evaluate("validation", (start, end))
    assert result["exact"] == 100.0 and result["f1"] == 100.0
    assert result["HasAns_total"] == 1 and result["NoAns_total"] == 1
    assert result["best_f1"] == 100.0
    # Everything null: q-none right, q-words wrong.
    start, end = _logits(split, {}, cls=1.0)
    result = data.evaluate("validation", (start, end))
    assert result["exact"] == 50.0 and result["HasAns_exact"] == 0.0 and result["NoAns_exact"] == 100.0

    data = load_task(
        "squad", tokenizer=tokenizer, data_dir=_v1_dir(tmp_path), max_seq_length=MAX_LEN, doc_stride=STRIDE
    )
    split = data.evals["validation"]
    rows = {i: (int(split.start_positions[i]), int(split.end_positions[i]), 5.0) for i in range(len(split))}
    start, end = _logits(split, {i: r for i, r in rows.items() if r[0] > 0})
    assert data.evaluate("validation", (start, end)) == {"exact_match": 100.0, "f1": 100.0}


def _v1_dir(tmp_path):
    folder = tmp_path / "squad1"
    folder.mkdir()
    squad_json(folder / "train-v1.1.json", V1)
    squad_json(folder / "dev-v1.1.json", V1)
    return folder


# ---- bad input -----------------------------------------------------------------------------------


def test_answer_that_does_not_match_its_offset(tmp_path):
    path = squad_json(tmp_path / "bad.json", [qa("q-7", [(ANSWER, START + 1)])])
    with pytest.raises(
        TaskDataError, match=r"bad\.json, question q-7: answer text 'Green  Music Paper' .*'reen  Music Paper '"
    ):
        read_squad_file(get_task_spec("squad"), path)


def test_unanswerable_in_v1_and_duplicates_and_malformed(tmp_path):
    path = squad_json(tmp_path / "a.json", V2, version="v2.0")
    with pytest.raises(TaskDataError, match=r"a\.json, question q-none: no answer.*squad_v2"):
        read_squad_file(get_task_spec("squad"), path)
    path = squad_json(tmp_path / "b.json", [V1[1], V1[1]])
    with pytest.raises(TaskDataError, match="question id q-apple appears more than once"):
        read_squad_file(get_task_spec("squad"), path)
    path = tmp_path / "c.json"
    path.write_text('{"data": [\n{"paragraphs": [}]}')
    with pytest.raises(TaskDataError, match=r"c\.json: malformed JSON at line 2, column 17"):
        read_squad_file(get_task_spec("squad"), path)
    path = squad_json(tmp_path / "d.json", [{"id": "q-9", "answers": []}])
    with pytest.raises(TaskDataError, match=r"d\.json: malformed SQuAD JSON at question q-9.*'question'"):
        read_squad_file(get_task_spec("squad"), path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_squad_splits(get_task_spec("squad"), train_file=tmp_path / "missing.json", validation_file="x.json")
    with pytest.raises(FileNotFoundError, match="train-v1.1.json not found"):
        load_squad_splits(get_task_spec("squad"), data_dir=tmp_path)


def test_stride_must_leave_room(tmp_path, tokenizer):
    examples = read_squad_file(get_task_spec("squad"), squad_json(tmp_path / "v1.json", V1))
    with pytest.raises(ValueError, match=r"doc_stride 8 must be smaller .* = 8 \(question q-words\)"):
        encode_squad(tokenizer, examples, max_seq_length=MAX_LEN, doc_stride=8)


def test_hub_offline_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.time()
    with pytest.raises(FileNotFoundError, match=r"rajpurkar/squad_v2.*--train-file train-v2.0.json"):
        load_squad_splits(get_task_spec("squad_v2"))
    assert time.time() - started < 5
