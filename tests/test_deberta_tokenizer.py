"""DeBERTa-v3 tokenization through transformers, checked against sentencepiece on a tiny trained model.

transformers 5 reads the sentencepiece model only as ``spm.model`` inside a tokenizer directory
(``vocab_file=`` is ignored), so the test writes such a directory.
"""

import io
import json
import random

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, DebertaV2Tokenizer

SYLLABLES = "ka lo mi ne ru sa ti vo be da fe gu hi jo pa qu re st th ch".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    words += "the lazy dog jumps over a brown cat".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A DeBERTa-v3-style sentencepiece model: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, [MASK] user-defined."""
    directory = tmp_path_factory.mktemp("deberta_tokenizer")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences(400)),
        model_writer=model,
        vocab_size=200,
        model_type="unigram",
        pad_id=0,
        pad_piece="[PAD]",
        bos_id=1,
        bos_piece="[CLS]",
        eos_id=2,
        eos_piece="[SEP]",
        unk_id=3,
        unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"],
        num_threads=1,
        minloglevel=2,
    )
    (directory / "spm.model").write_bytes(model.getvalue())
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))
    return directory


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def processor(tokenizer_dir):
    return spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "spm.model"))


def test_loads_as_deberta_tokenizer_with_spm_special_ids(tokenizer, processor):
    assert isinstance(tokenizer, DebertaV2Tokenizer)
    assert len(tokenizer) == processor.get_piece_size() == 200
    for token in ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"):
        assert tokenizer.convert_tokens_to_ids(token) == processor.piece_to_id(token)
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == (0, 1, 2)


@pytest.mark.parametrize("text", ["the lazy dog jumps over a brown cat", sentences(3, seed=5)[2], "the zebra q!"])
def test_single_sentence_matches_sentencepiece(tokenizer, processor, text):
    encoded = tokenizer(text)
    pieces = processor.encode(text)
    assert encoded["input_ids"] == [tokenizer.cls_token_id, *pieces, tokenizer.sep_token_id]
    # Compared through ids: sentencepiece spells an unknown piece as its surface text, not [UNK].
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"])[1:-1] == [processor.id_to_piece(i) for i in pieces]
    assert encoded["token_type_ids"] == [0] * len(encoded["input_ids"])
    assert encoded["attention_mask"] == [1] * len(encoded["input_ids"])


def test_pair_gives_deberta_token_types(tokenizer, processor):
    first, second = sentences(2, seed=3)
    encoded = tokenizer(first, second)
    a, b = processor.encode(first), processor.encode(second)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert encoded["input_ids"] == [cls, *a, sep, *b, sep]
    # [CLS] A [SEP] are segment 0; B [SEP] are segment 1.
    assert encoded["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_padding_uses_pad_id_zero(tokenizer):
    encoded = tokenizer(["the cat", "the lazy dog jumps over a brown cat"], padding="max_length", max_length=24)
    short = encoded["input_ids"][0]
    n = sum(encoded["attention_mask"][0])
    assert short[n:] == [0] * (24 - n) and encoded["attention_mask"][0][n:] == [0] * (24 - n)
