"""WordPieceTokenizer against transformers' pure-Python BERT tokenizer on a hand-made vocab."""

import numpy as np
import pytest

from lxmert_jax.data.tokenization import SPECIAL_TOKENS, WordPieceTokenizer, train_vocab

VOCAB = list(SPECIAL_TOKENS) + [
  "the",
  "a",
  "man",
  "cafe",
  "is",
  "what",
  "color",
  "dog",
  "run",
  "##ning",
  "un",
  "##aff",
  "##able",
  "aff",
  "resume",
  "naive",
  "x",
  "##x",
  "1",
  "##2",
  "3",
  "中",
  "国",
  "?",
  ".",
  ",",
  "!",
  "'",
  "s",
  "(",
  ")",
  "-",
  '"',
  "$",
  "##s",
  "dogs",
]
SENTENCES = [
  "The man's café is unaffable!",  # accents, apostrophe, multi-piece word
  "  Résumé naïve  ",  # surrounding whitespace is stripped
  "What color is the dog?",
  "ÀFFABLE DOGS",  # upper case + accent on a piece boundary
  "[MASK] dog",  # a literal special token stays one token
  "[mask] dog",  # ... but only in its exact spelling
  "x" * 101,  # > 100 characters: the whole word becomes [UNK]
  "x" * 100,  # exactly 100: split into pieces, then truncated
  "中国 running",  # CJK characters are words of their own
  'Dog\u00a0run\x00ning\t(a-b) "$3"',  # nbsp, control character, tab, punctuation
  "12 3 zebra",  # unknown word -> [UNK]
  "the " * 30,  # truncation at 18 pieces
]


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def reference(vocab_path):
  from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

  return BertTokenizerLegacy(vocab_path, do_lower_case=True)


@pytest.mark.parametrize("text", SENTENCES)
def test_matches_python_bert_tokenizer(vocab_path, reference, text):
  tok = WordPieceTokenizer(vocab_path, max_seq_length=20)
  pieces = reference.convert_tokens_to_ids(reference.tokenize(text.strip()))
  expected = [reference.cls_token_id] + pieces[:18] + [reference.sep_token_id]
  assert tok.encode(text) == expected


def test_truncation_and_long_words(vocab_path):
  tok = WordPieceTokenizer(vocab_path, max_seq_length=20)
  ids = tok.encode("the " * 30)
  assert len(ids) == 20 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
  assert tok.convert_ids_to_tokens(tok.encode("x" * 101)) == ["[CLS]", "[UNK]", "[SEP]"]
  assert len(tok.encode("x" * 100)) == 20  # x ##x ... cut to 18 pieces


def test_encode_padded(vocab_path):
  tok = WordPieceTokenizer(vocab_path, max_seq_length=8)
  ids, mask = tok.encode_padded(["the man", "what color is the dog ? the dog"])
  assert ids.shape == mask.shape == (2, 8) and ids.dtype == mask.dtype == np.int32
  assert ids[0].tolist() == [
    tok.cls_id,
    VOCAB.index("the"),
    VOCAB.index("man"),
    tok.sep_id,
    0,
    0,
    0,
    0,
  ]
  assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
  assert mask[1].tolist() == [1] * 8 and ids[1, -1] == tok.sep_id
  assert tok.encode_batch is not None and tok.encode_batch(["dog"])[0].shape == (1, 8)


def test_special_ids_decode_and_errors(vocab_path):
  tok = WordPieceTokenizer(vocab_path)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size == len(VOCAB)
  assert (
    tok.decode(tok.encode("Running dogs!")) == "running dogs!"
  )  # the WordPiece decoder re-attaches punctuation
  with pytest.raises(ValueError, match="empty sentence: '   '"):
    tok.encode("   ")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.convert_ids_to_tokens([len(VOCAB)])


def test_pad_must_be_zero(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
  with pytest.raises(ValueError, match=r"\[PAD\] must be id 0"):
    WordPieceTokenizer(str(path))


def test_train_vocab(tmp_path):
  texts = ["What color is the running dog?", "Is the man running?", "Two dogs run."] * 10
  out = tmp_path / "vocab.txt"
  tokens = train_vocab(texts, vocab_size=120, out_path=str(out))
  assert tokens[:5] == list(SPECIAL_TOKENS)
  assert out.read_text().splitlines() == tokens
  tok = WordPieceTokenizer(str(out))
  ids = tok.encode("What color is the dog?")
  assert tok.unk_id not in ids
  assert tok.decode(ids) == "what color is the dog?"
