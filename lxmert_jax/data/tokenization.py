"""BERT-uncased WordPiece tokenisation as LXMERT uses it (spec section 5.7), on HF `tokenizers`.

The original (`src/lxrt/tokenization.py`, a copy of pytorch-pretrained-bert) lower-cases, strips
accents, splits on whitespace and punctuation (CJK characters become single words), then does
greedy longest-match WordPiece with words over 100 characters mapped to [UNK]. The Rust
pipeline below (BertNormalizer + BertPreTokenizer + WordPiece) is the same algorithm;
``tests/test_tokenization.py`` checks it against transformers' pure-Python BERT tokenizer.

Every LXMERT task encodes a sentence as [CLS] + pieces[:max_seq_length - 2] + [SEP] and pads
with id 0 to exactly ``max_seq_length`` (20), so ``[PAD]`` must be id 0 in any vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Original BERT: words longer than this many characters become a single [UNK].
MAX_CHARS_PER_WORD = 100


def _bert_pipeline(tokenizer):
  """Attaches BERT-uncased normalisation and pre-tokenisation to a `tokenizers.Tokenizer`."""
  from tokenizers import decoders, normalizers, pre_tokenizers

  tokenizer.normalizer = normalizers.BertNormalizer(
    clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
  )
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = decoders.WordPiece(prefix="##")
  return tokenizer


class WordPieceTokenizer:
  """Encodes sentences into LXMERT's fixed-length WordPiece id sequences.

  Args:
    vocab_path: a BERT ``vocab.txt`` (one token per line, id = line number), e.g. the 30522-token
      ``bert-base-uncased`` vocabulary or one written by :func:`train_vocab`.
    max_seq_length: L, the sequence length including [CLS] and [SEP] (20 in every LXMERT script).
  """

  def __init__(self, vocab_path: str, max_seq_length: int = 20):
    from tokenizers import Tokenizer, models

    if max_seq_length < 3:
      raise ValueError(f"max_seq_length must be >= 3 ([CLS] x [SEP]), got {max_seq_length}")
    if not os.path.isfile(vocab_path):
      raise FileNotFoundError(f"vocabulary file {vocab_path} not found")
    self.vocab_path = vocab_path
    self.max_seq_length = max_seq_length
    vocab = models.WordPiece.read_file(vocab_path)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
      raise ValueError(f"{vocab_path}: special tokens {missing} missing from the vocabulary")
    if vocab["[PAD]"] != 0:
      raise ValueError(f"{vocab_path}: [PAD] must be id 0 (padding uses 0), got {vocab['[PAD]']}")
    model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_CHARS_PER_WORD)
    self._tokenizer = _bert_pipeline(Tokenizer(model))
    # Registered as special tokens so that a literal "[MASK]" in the text stays one token and is
    # not lower-cased and split, as the original's never_split list does for whole words.
    self._tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    self._vocab_size = len(vocab)

  # -- ids of the special tokens ---------------------------------------------------------------
  def _id(self, token: str) -> int:
    return int(self._tokenizer.token_to_id(token))

  @property
  def pad_id(self) -> int:
    return self._id("[PAD]")

  @property
  def unk_id(self) -> int:
    return self._id("[UNK]")

  @property
  def cls_id(self) -> int:
    return self._id("[CLS]")

  @property
  def sep_id(self) -> int:
    return self._id("[SEP]")

  @property
  def mask_id(self) -> int:
    return self._id("[MASK]")

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  # -- encoding ---------------------------------------------------------------------------------
  def _wrap(self, pieces: Sequence[int]) -> list[int]:
    # Truncate the pieces, not the final sequence, so [SEP] always survives (original entry.py).
    return [self.cls_id, *pieces[: self.max_seq_length - 2], self.sep_id]

  @staticmethod
  def _clean(text: str) -> str:
    if not isinstance(text, str):
      raise TypeError(f"expected a sentence string, got {type(text).__name__}: {text!r}")
    stripped = text.strip()
    if not stripped:
      raise ValueError(f"cannot tokenise an empty sentence: {text!r}")
    return stripped

  def encode(self, text: str) -> list[int]:
    """Returns [CLS] + WordPiece ids[:max_seq_length - 2] + [SEP] (unpadded, 3..L ids).

    Raises:
      ValueError: if ``text`` is empty after ``.strip()``.
    """
    ids = self._tokenizer.encode(self._clean(text), add_special_tokens=False).ids
    return self._wrap(ids)

  def encode_list(self, texts: Iterable[str]) -> list[list[int]]:
    """Encodes many sentences (Rust, multi-threaded); each as :meth:`encode`, unpadded."""
    texts = [self._clean(t) for t in texts]
    encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
    return [self._wrap(e.ids) for e in encodings]

  def encode_padded(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encodes sentences into model inputs.

    Returns:
      ``(input_ids, attention_mask)``, both [batch, max_seq_length] int32; ids padded with 0
      ([PAD]) and mask 1 on [CLS], pieces and [SEP], 0 on padding.
    """
    rows = self.encode_list(texts)
    input_ids = np.zeros((len(rows), self.max_seq_length), np.int32)
    for i, row in enumerate(rows):
      input_ids[i, : len(row)] = row
    lengths = np.array([len(r) for r in rows], np.int32).reshape(-1, 1)
    attention_mask = (np.arange(self.max_seq_length)[None, :] < lengths).astype(np.int32)
    return input_ids, attention_mask

  # Same as encode_padded; the name used elsewhere in the project for padded batches.
  encode_batch = encode_padded

  # -- decoding ---------------------------------------------------------------------------------
  def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
    """Maps ids to vocabulary strings (WordPiece continuations keep their ``##``)."""
    tokens = []
    for i in ids:
      token = self._tokenizer.id_to_token(int(i))
      if token is None:
        raise ValueError(f"token id {int(i)} outside the vocabulary (size {self.vocab_size})")
      tokens.append(token)
    return tokens

  def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
    unk = self.unk_id
    ids = [self._tokenizer.token_to_id(t) for t in tokens]
    return [unk if i is None else int(i) for i in ids]

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """Joins WordPieces back into text ([PAD], [CLS], [SEP] dropped by default)."""
    ids = [int(i) for i in ids]
    self.convert_ids_to_tokens(ids)  # Raises on out-of-vocabulary ids with a clear message.
    return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def train_vocab(
  texts: Iterable[str], vocab_size: int, out_path: str, min_frequency: int = 1
) -> list[str]:
  """Trains a BERT-uncased WordPiece vocabulary and writes it as ``vocab.txt``.

  The special tokens come first, [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4 (BERT's own file
  has 99 [unused*] slots before [UNK]; nothing in this project depends on those).

  Args:
    texts: training sentences (raw; normalised like at encoding time).
    vocab_size: the largest vocabulary to produce (smaller if the text has fewer pieces).
    out_path: where to write the vocabulary, one token per line.
    min_frequency: pieces seen fewer times are not added.

  Returns:
    The vocabulary, index = token id.
  """
  from tokenizers import Tokenizer, models, trainers

  if vocab_size <= len(SPECIAL_TOKENS):
    raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens")
  tokenizer = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")))
  trainer = trainers.WordPieceTrainer(
    vocab_size=vocab_size,
    min_frequency=min_frequency,
    special_tokens=list(SPECIAL_TOKENS),
    continuing_subword_prefix="##",
    show_progress=False,
  )
  tokenizer.train_from_iterator(texts, trainer=trainer)
  vocab = tokenizer.get_vocab()
  tokens = sorted(vocab, key=vocab.get)
  if [vocab[t] for t in tokens] != list(range(len(tokens))):
    raise RuntimeError("trained vocabulary ids are not contiguous")
  if tokens[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
    raise RuntimeError(f"special tokens not at ids 0..4: {tokens[: len(SPECIAL_TOKENS)]}")
  out_dir = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(out_dir, exist_ok=True)
  tmp = out_path + ".incomplete"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(t + "\n" for t in tokens)
  os.replace(tmp, out_path)
  return tokens
