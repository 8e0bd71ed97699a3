"""Input pipeline: small shards written with ShardedGroupWriter -> per-sentence pmap batches.

``write_dataset`` is also used by test_train.py and test_checkpoint.py.
"""

import collections

import numpy as np
import pytest

from lxmert_jax.data import pipeline, schema
from tfrecords_tools import shards

# Tokenizer facts recorded the way tfrecords_tools/convert.py records them.
TOKENIZER = {
  "vocab_size": 99,
  "max_seq_length": 20,
  "pad_id": 0,
  "unk_id": 1,
  "cls_id": 2,
  "sep_id": 3,
  "mask_id": 4,
}
ANSWERS = [f"ans{i}" for i in range(13)]


def write_dataset(
  out_dir,
  split="train",
  num_groups=12,
  *,
  num_images=1,
  num_boxes=5,
  feat_dim=11,
  max_sentences=4,
  max_tokens=9,
  num_shards=4,
  seed=0,
  learnable=False,
):
  """Writes random image groups; returns {uid: Sentence} in writing order.

  With ``learnable``, answers and NLVR2 labels are functions of the features, so a model can
  fit them (loss-falls tests).
  """
  rng = np.random.default_rng(seed)
  sentences = {}
  with shards.ShardedGroupWriter(
    str(out_dir), split, num_shards=num_shards, feat_dtype="float32"
  ) as writer:
    for g in range(num_groups):
      images = []
      for i in range(num_images):
        xy = rng.uniform(0, 0.5, (num_boxes, 2))
        images.append(
          schema.ImageFeatures(
            img_id=f"{split}_img{g}_{i}",
            img_h=100,
            img_w=200,
            features=rng.normal(size=(num_boxes, feat_dim)).astype(np.float32),
            boxes=np.concatenate([xy, xy + 0.4], 1).astype(np.float32),
            objects_id=rng.integers(0, 17, num_boxes),
            objects_conf=rng.uniform(size=num_boxes),
            attrs_id=rng.integers(0, 7, num_boxes),
            attrs_conf=rng.uniform(size=num_boxes),
          )
        )
      group = []
      for s in range(int(rng.integers(1, max_sentences + 1))):
        n = int(rng.integers(0, max_tokens - 1))
        k = int(rng.integers(0, 4))
        ids = list(rng.choice(len(ANSWERS), k, replace=False))
        scores = list(rng.uniform(0.3, 1.0, k))
        label = int(rng.integers(0, 2))
        if learnable:
          label = int(images[0].features[0, 0] > 0)
          ids, scores = [int(np.argmax(images[0].features[0, :5]))], [1.0]
        uid = f"{split}-{g}-{s}"
        sentences[uid] = schema.Sentence(
          uid=uid,
          token_ids=[2, *rng.integers(5, 99, n), 3],
          answer_ids=ids,
          answer_scores=scores,
          answer_type=int(rng.integers(0, 3)),
          label=label,
        )
        group.append(sentences[uid])
      writer.write(images, group)
    writer.top_info.update(
      tokenizer=TOKENIZER, answer_vocab=ANSWERS, num_answers=len(ANSWERS), task="test"
    )
  return sentences


def _layout(data_dir, max_seq_length=7, num_images=1):
  return pipeline.Layout.from_info(str(data_dir), max_seq_length, num_images)


def _eval_uids(data):
  out = []
  for batch in data:
    mask = batch["example_mask"].reshape(-1)
    out += [u.decode() for u, m in zip(batch["sent_uid"].reshape(-1), mask) if m]
  return out


def test_eval_examples_per_sentence_with_padding(tmp_path):
  sents = write_dataset(tmp_path, num_groups=7, max_tokens=10)
  data = pipeline.make_eval_dataset(
    str(tmp_path),
    "train",
    layout=_layout(tmp_path),
    global_batch_size=8,
    num_devices=2,
    process_index=0,
    process_count=1,
  )
  assert data.num_examples == len(sents)
  assert data.num_batches == -(-len(sents) // 8)
  batches = list(data)
  assert len(batches) == data.num_batches
  b = batches[0]
  assert b["input_ids"].shape == (2, 4, 7) and b["visual_feats"].shape == (2, 4, 5, 11)
  assert b["answer_ids"].shape == (2, 4, schema.MAX_ANSWERS)
  assert set(b) == set(schema.BATCH_KEYS) | set(pipeline.EXTRA_KEYS) | set(pipeline.HOST_KEYS)
  # Every sentence exactly once, each with its own tokens and answers, padded as specified.
  uids = _eval_uids(batches)
  assert sorted(uids) == sorted(sents)
  flat = {k: np.concatenate([x[k].reshape((-1,) + x[k].shape[2:]) for x in batches]) for k in b}
  for i, uid in enumerate(flat["sent_uid"]):
    if not flat["example_mask"][i]:
      assert flat["answer_ids"][i].tolist() == [-1] * schema.MAX_ANSWERS
      assert uid == b"" and flat["input_ids"][i].sum() == 0
      continue
    s = sents[uid.decode()]
    tokens = list(s.token_ids)
    if len(tokens) > 7:  # [CLS] + pieces[:5] + [SEP]
      tokens = tokens[:6] + tokens[-1:]
    n = len(tokens)
    np.testing.assert_array_equal(flat["input_ids"][i], tokens + [0] * (7 - n))
    np.testing.assert_array_equal(flat["attention_mask"][i], [1] * n + [0] * (7 - n))
    np.testing.assert_array_equal(flat["token_type_ids"][i], 0)
    k = len(s.answer_ids)
    np.testing.assert_array_equal(flat["answer_ids"][i], list(s.answer_ids) + [-1] * (10 - k))
    np.testing.assert_allclose(
      flat["answer_scores"][i], list(s.answer_scores) + [0] * (10 - k), rtol=1e-6
    )
    assert flat["label"][i] == s.label and flat["answer_type"][i] == s.answer_type
  assert flat["example_mask"].sum() == len(sents)
  # Sentences of one image share its features and image_index; other images differ.
  by_image = collections.defaultdict(set)
  for i, uid in enumerate(flat["sent_uid"]):
    if uid:
      by_image[uid.decode().rsplit("-", 1)[0]].add(int(flat["image_index"][i]))
  assert all(len(v) == 1 for v in by_image.values())
  assert len({next(iter(v)) for v in by_image.values()}) == len(by_image)


def test_eval_hosts_run_same_batches_and_cover_everything(tmp_path):
  sents = write_dataset(tmp_path, num_groups=9)
  per_host = []
  for host in range(2):
    data = pipeline.make_eval_dataset(
      str(tmp_path),
      "train",
      layout=_layout(tmp_path),
      global_batch_size=8,
      num_devices=2,
      process_index=host,
      process_count=2,
    )
    batches = list(data)
    assert len(batches) == data.num_batches  # Equal on every host (pmap would hang otherwise).
    assert batches[0]["input_ids"].shape == (2, 2, 7)
    per_host.append(_eval_uids(batches))
  assert len(per_host[0]) - len(per_host[1]) in (0, 1)
  assert sorted(per_host[0] + per_host[1]) == sorted(sents)


def _train_uids(data_dir, *, seed, start_step=0, steps=6, process_index=0, process_count=1):
  ds = pipeline.make_train_dataset(
    str(data_dir),
    "train",
    layout=_layout(data_dir),
    global_batch_size=4 * process_count,
    seed=seed,
    start_step=start_step,
    num_devices=2,
    process_index=process_index,
    process_count=process_count,
    shuffle_buffer_groups=4,
    shuffle_buffer_examples=8,
    threads=0,
  )
  it = pipeline.train_iterator(ds)
  out = []
  for _ in range(steps):
    b = next(it)
    assert b["input_ids"].shape == (2, 2, 7) and "sent_uid" not in b
    assert b["example_mask"].min() == 1
    out.append(b["image_index"].reshape(-1).tolist() + b["input_ids"][..., 1].reshape(-1).tolist())
  return out


def test_train_order_is_a_function_of_seed_and_resumes_exactly(tmp_path):
  sents = write_dataset(tmp_path, num_groups=6)
  full = _train_uids(tmp_path, seed=3, steps=3 * len(sents) // 4 + 2)  # several epochs
  assert full == _train_uids(tmp_path, seed=3, steps=len(full))
  assert full != _train_uids(tmp_path, seed=4, steps=len(full))
  # Inside the first epoch, at an epoch boundary, and inside a later epoch.
  for start in (1, len(sents) // 4, 2 * len(sents) // 4 + 1):
    assert _train_uids(tmp_path, seed=3, start_step=start, steps=2) == full[start : start + 2]
  # Epochs are reshuffled: the first two epochs' orders differ.
  n = len(sents) // 4
  assert full[:n] != full[n : 2 * n]


def test_train_files_are_sharded_per_host(tmp_path):
  write_dataset(tmp_path, num_groups=8, num_shards=4)
  files = {h: pipeline.host_files(str(tmp_path), "train", h, 2) for h in (0, 1)}
  assert not set(files[0]) & set(files[1]) and len(files[0]) == len(files[1]) == 2
  images = {
    h: {
      i
      for step in _train_uids(tmp_path, seed=0, steps=4, process_index=h, process_count=2)
      for i in step[:4]
    }
    for h in (0, 1)
  }
  assert not images[0] & images[1]  # Each host reads only its own image groups.
  with pytest.raises(ValueError, match="fewer than the 8 hosts"):
    pipeline.host_files(str(tmp_path), "train", 0, 8)


def test_nlvr2_pairs_and_bad_input(tmp_path):
  write_dataset(tmp_path / "pairs", num_images=2, num_groups=3)
  data = pipeline.make_eval_dataset(
    str(tmp_path / "pairs"),
    "train",
    layout=_layout(tmp_path / "pairs", num_images=2),
    global_batch_size=4,
    num_devices=2,
    process_index=0,
    process_count=1,
  )
  b = next(iter(data))
  assert b["visual_feats"].shape == (2, 2, 2, 5, 11) and b["obj_labels"].shape == (2, 2, 2, 5)
  # A one-image task reading two-image records fails loudly instead of mixing images.
  data = pipeline.make_eval_dataset(
    str(tmp_path / "pairs"),
    "train",
    layout=_layout(tmp_path / "pairs", num_images=1),
    global_batch_size=4,
    num_devices=2,
    process_index=0,
    process_count=1,
  )
  with pytest.raises(Exception, match="record features must be"):
    next(iter(data))
  with pytest.raises(ValueError, match="not divisible by the 3 local devices"):
    pipeline.local_batch_size(8, 1, 3)
  with pytest.raises(ValueError, match="split 'valid' is not in .*dataset_info.json"):
    pipeline.num_examples(str(tmp_path / "pairs"), "valid")
  with pytest.raises(FileNotFoundError, match="no shards of split 'valid'"):
    pipeline.host_files(str(tmp_path / "pairs"), "valid", 0, 1)


def test_train_throughput(tmp_path):
  """Pipeline speed on CPU (printed; asserts only that it is not pathologically slow)."""
  import time

  write_dataset(tmp_path, num_groups=64, num_boxes=36, feat_dim=64, num_shards=8)
  ds = pipeline.make_train_dataset(
    str(tmp_path),
    "train",
    layout=_layout(tmp_path),
    global_batch_size=32,
    seed=0,
    num_devices=8,
    process_index=0,
    process_count=1,
    threads=0,
  )
  it = pipeline.train_iterator(ds)
  next(it)
  t0 = time.time()
  for _ in range(20):
    next(it)
  rate = 20 * 32 / (time.time() - t0)
  print(f"pipeline: {rate:.0f} examples/s (36 boxes x 64 dims)")
  assert rate > 200
