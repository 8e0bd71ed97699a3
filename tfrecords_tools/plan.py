"""The annotation side of a conversion: which image groups exist and their tokenised sentences.

Task readers (pretraining, VQA, GQA, NLVR2) turn their JSON into :class:`RawSentence` rows;
:func:`build_plan` tokenises them and groups them by image group (one image, or the NLVR2 pair).
The plan is small next to the features and lives in memory; features are then streamed once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lxmert_jax.data import schema
from lxmert_jax.data.tokenization import WordPieceTokenizer
from tfrecords_tools.common import Report, log

# Sentences tokenised per Rust batch call (bounds the temporary Encoding objects).
TOKENIZE_BATCH = 65536


@dataclasses.dataclass
class RawSentence:
  """One annotation row before tokenisation.

  Attributes:
    group: image-group key (the img_id, or the NLVR2 image-pair id).
    img_ids: the group's images, in model order (NLVR2: img0, img1).
    text: the raw sentence.
    uid: sentence / question id as text.
    where: ``file: entry i`` for error messages.
  """

  group: str
  img_ids: tuple[str, ...]
  text: str
  uid: str
  where: str
  answer_ids: Sequence[int] = ()
  answer_scores: Sequence[float] = ()
  answer_type: int = -1
  label: int = -1


@dataclasses.dataclass
class Group:
  """One image group and its sentences, packed into a few flat arrays.

  One object per group instead of ~5 per sentence: pretraining has 9.18M sentences, and forked
  workers copy every page whose reference counts they touch, so fewer objects also means less
  copy-on-write growth in the workers.

  Attributes:
    img_ids: the group's images, in model order.
    where: the first annotation that mentions the group (for "unknown image" errors).
    uids: sentence ids joined with newlines.
    token_ids: [T] int32, all sentences' WordPiece ids; ``sent_len`` [S] splits them.
    answer_type, label: [S] int8.
    ans_id: [A] int32 and ``ans_score`` [A] float32; ``ans_len`` [S] splits them.
  """

  img_ids: tuple[str, ...]
  where: str
  uids: str
  token_ids: np.ndarray
  sent_len: np.ndarray
  answer_type: np.ndarray
  label: np.ndarray
  ans_id: np.ndarray
  ans_score: np.ndarray
  ans_len: np.ndarray

  @property
  def num_sentences(self) -> int:
    return len(self.sent_len)

  @property
  def sentences(self) -> list[schema.Sentence]:
    """The sentences as :class:`schema.Sentence` (what :func:`schema.encode_group` takes)."""
    tok_ends, ans_ends = np.cumsum(self.sent_len), np.cumsum(self.ans_len)
    return [
      schema.Sentence(
        uid=uid,
        token_ids=self.token_ids[tok_ends[i] - self.sent_len[i] : tok_ends[i]],
        answer_ids=self.ans_id[ans_ends[i] - self.ans_len[i] : ans_ends[i]],
        answer_scores=self.ans_score[ans_ends[i] - self.ans_len[i] : ans_ends[i]],
        answer_type=int(self.answer_type[i]),
        label=int(self.label[i]),
      )
      for i, uid in enumerate(self.uids.split("\n"))
    ]


def _pack(img_ids, where, rows: list, token_ids: list) -> Group:
  """Packs a group's rows and their token id lists into a :class:`Group`."""
  return Group(
    img_ids=img_ids,
    where=where,
    uids="\n".join(r.uid for r in rows),
    token_ids=np.fromiter((t for ids in token_ids for t in ids), np.int32),
    sent_len=np.array([len(ids) for ids in token_ids], np.int32),
    answer_type=np.array([r.answer_type for r in rows], np.int8),
    label=np.array([r.label for r in rows], np.int8),
    ans_id=np.fromiter((a for r in rows for a in r.answer_ids), np.int32),
    ans_score=np.fromiter((a for r in rows for a in r.answer_scores), np.float32),
    ans_len=np.array([len(r.answer_ids) for r in rows], np.int32),
  )


@dataclasses.dataclass
class Plan:
  """Image groups to write. ``image_groups`` maps each img_id to the keys of its groups."""

  groups: dict[str, Group]
  image_groups: dict[str, list[str]]

  @property
  def num_sentences(self) -> int:
    return sum(g.num_sentences for g in self.groups.values())


def build_plan(rows: Sequence[RawSentence], tokenizer: WordPieceTokenizer, report: Report) -> Plan:
  """Checks, tokenises and groups annotation rows.

  Bad rows (empty sentence, duplicate uid, a group key used with different images) raise a
  :class:`ConversionError` naming the file and entry, or are skipped under ``--skip_bad``.
  """
  kept, seen_uids, group_images = [], set(), {}
  for row in rows:
    if not isinstance(row.text, str) or not row.text.strip():
      report.bad("sentences", f"{row.where}: empty sentence {row.text!r}")
      continue
    if "\n" in row.uid:
      report.bad("sentences", f"{row.where}: sentence id {row.uid!r} contains a newline")
      continue
    if row.uid in seen_uids:
      report.bad("sentences", f"{row.where}: duplicate sentence id {row.uid!r}")
      continue
    if group_images.setdefault(row.group, row.img_ids) != row.img_ids:
      report.bad(
        "sentences",
        f"{row.where}: group {row.group!r} has images {list(row.img_ids)} here but "
        f"{list(group_images[row.group])} elsewhere",
      )
      continue
    seen_uids.add(row.uid)
    kept.append(row)

  by_group: dict[str, tuple[list, list]] = {}  # key -> (rows, token id lists)
  for start in range(0, len(kept), TOKENIZE_BATCH):
    batch = kept[start : start + TOKENIZE_BATCH]
    for row, ids in zip(batch, tokenizer.encode_list([r.text for r in batch]), strict=True):
      rows_of_group, ids_of_group = by_group.setdefault(row.group, ([], []))
      rows_of_group.append(row)
      ids_of_group.append(ids)
  groups = {key: _pack(rs[0].img_ids, rs[0].where, rs, ids) for key, (rs, ids) in by_group.items()}
  del by_group
  image_groups: dict[str, list[str]] = {}
  for key, group in groups.items():
    for img_id in group.img_ids:
      image_groups.setdefault(img_id, []).append(key)
  plan = Plan(groups, image_groups)
  log.info(
    "annotations: %d sentences in %d image groups over %d images",
    plan.num_sentences,
    len(groups),
    len(image_groups),
  )
  return plan
