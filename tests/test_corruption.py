"""In-jit corruption: masking rates within 3 sigma, special tokens untouched, mismatch, QA."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lxmert_jax import corruption

PAD, CLS, SEP, MASK = 0, 101, 102, 103
SPECIAL = (PAD, CLS, SEP)


def within_3_sigma(count, n, p):
  sigma = np.sqrt(n * p * (1 - p))
  return abs(count - n * p) <= 3 * sigma, (count / n, p)


def make_tokens(batch, seq_len, vocab, seed=0):
  """[CLS] w1..wk [SEP] [PAD]... with random lengths; ids of words avoid the special ids."""
  rng = np.random.default_rng(seed)
  ids = np.full((batch, seq_len), PAD, np.int32)
  mask = np.zeros((batch, seq_len), np.int32)
  for b in range(batch):
    k = rng.integers(1, seq_len - 1)
    ids[b, 0], ids[b, k + 1] = CLS, SEP
    ids[b, 1 : k + 1] = rng.integers(MASK + 1, vocab, k)
    mask[b, : k + 2] = 1
  return jnp.asarray(ids), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnames=("vocab",))
def _mask(rng, ids, mask, vocab):
  return corruption.mask_tokens(
    rng, ids, mask, vocab_size=vocab, mask_token_id=MASK, special_token_ids=SPECIAL
  )


def test_token_masking_rates_and_split():
  vocab = 1000
  ids, mask = make_tokens(512, 40, vocab)
  words = np.asarray((mask > 0) & (ids != CLS) & (ids != SEP))
  sel = n_mask = n_same = n_other = n_words = 0
  for seed in range(4):
    new, labels = map(np.asarray, _mask(jax.random.PRNGKey(seed), ids, mask, vocab))
    selected = labels != -1
    # Never [CLS]/[SEP]/padding; labels are the original ids.
    assert not np.any(selected & ~words)
    np.testing.assert_array_equal(new[~selected], np.asarray(ids)[~selected])
    np.testing.assert_array_equal(labels[selected], np.asarray(ids)[selected])
    n_words += words.sum()
    sel += selected.sum()
    n_mask += (new[selected] == MASK).sum()
    n_same += (new[selected] == labels[selected]).sum()
    n_other += ((new[selected] != MASK) & (new[selected] != labels[selected])).sum()
  ok, info = within_3_sigma(sel, n_words, 0.15)
  assert ok, info
  # A random id equals [MASK] or the original token with probability 1/V each.
  for count, p in ((n_mask, 0.8 + 0.1 / vocab), (n_same, 0.1 + 0.1 / vocab)):
    ok, info = within_3_sigma(count, sel, p)
    assert ok, info
  ok, info = within_3_sigma(n_other, sel, 0.1 - 0.2 / vocab)
  assert ok, info


def test_random_tokens_cover_the_entire_vocab_including_special_ids():
  vocab = 8  # tiny vocab: every id must show up among the 10% random replacements
  ids = jnp.full((256, 64), 5, jnp.int32)
  new, labels = _mask(jax.random.PRNGKey(3), ids, jnp.ones_like(ids), vocab)
  new, labels = np.asarray(new), np.asarray(labels)
  replaced = new[(labels != -1) & (new != MASK)]
  assert set(replaced.tolist()) == set(range(vocab))


def test_token_masking_is_deterministic_per_key():
  ids, mask = make_tokens(64, 20, 500)
  a = _mask(jax.random.PRNGKey(7), ids, mask, 500)
  b = _mask(jax.random.PRNGKey(7), ids, mask, 500)
  c = _mask(jax.random.PRNGKey(8), ids, mask, 500)
  np.testing.assert_array_equal(a[1], b[1])
  np.testing.assert_array_equal(a[0], b[0])
  assert np.any(np.asarray(a[1]) != np.asarray(c[1]))


def test_object_masking_rates_and_split():
  batch, boxes, dim = 64, 36, 8
  feats = jax.random.normal(jax.random.PRNGKey(0), (batch, boxes, dim)) + 3.0
  flat = np.asarray(feats).reshape(-1, dim)
  fn = jax.jit(corruption.mask_objects)
  sel = zero = same = other = n = 0
  for seed in range(4):
    new, fmask = map(np.asarray, fn(jax.random.PRNGKey(seed), feats))
    selected = fmask > 0
    np.testing.assert_array_equal(new[~selected], np.asarray(feats)[~selected])
    n += selected.size
    sel += selected.sum()
    picked, orig = new[selected], np.asarray(feats)[selected]
    is_zero = np.all(picked == 0, -1)
    is_same = np.all(picked == orig, -1)
    zero += is_zero.sum()
    same += is_same.sum()
    # Replacements are some box of the batch.
    rest = picked[~is_zero & ~is_same]
    assert all(np.any(np.all(flat == r, -1)) for r in rest)
    other += len(rest)
  ok, info = within_3_sigma(sel, n, 0.15)
  assert ok, info
  p_self = 1 / (batch * boxes)  # a random replacement may pick the box itself
  for count, p in ((zero, 0.8), (same, 0.1 + 0.1 * p_self), (other, 0.1 - 0.1 * p_self)):
    ok, info = within_3_sigma(count, sel, p)
    assert ok, info


def test_object_masking_never_uses_padding_examples_as_sources():
  feats = jnp.concatenate([jnp.ones((2, 36, 4)), jnp.full((2, 36, 4), 7.0)])
  example_mask = jnp.array([1.0, 1.0, 0.0, 0.0])
  fn = jax.jit(lambda r, f, m: corruption.mask_objects(r, f, mask_prob=1.0, example_mask=m))
  new, fmask = fn(jax.random.PRNGKey(0), feats, example_mask)
  assert float(fmask.min()) == 1.0
  assert not np.any(np.asarray(new)[:2] == 7.0)


@functools.partial(jax.jit, static_argnames=("max_tries",))
def _mismatch(rng, sentences, image_index, max_tries=8):
  return corruption.mismatch_sentences(rng, sentences, image_index, max_tries=max_tries)


def _sentences(batch, seq_len=6):
  ids = jnp.arange(batch * seq_len, dtype=jnp.int32).reshape(batch, seq_len)  # row-unique
  return {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "token_type_ids": ids * 0}


@pytest.mark.parametrize("images_per_group", [1, 2, 4])
def test_mismatch_rate_and_sources(images_per_group):
  batch = 256
  sents = _sentences(batch)
  image_index = jnp.arange(batch, dtype=jnp.int32) // images_per_group  # shared images
  new, matched = _mismatch(jax.random.PRNGKey(images_per_group), sents, image_index)
  new_ids, matched = np.asarray(new["input_ids"]), np.asarray(matched)
  ids = np.asarray(sents["input_ids"])
  source = new_ids[:, 0] // ids.shape[1]  # row the sentence came from
  np.testing.assert_array_equal(source[matched == 1], np.flatnonzero(matched == 1))
  img = np.asarray(image_index)
  assert np.all(img[source[matched == 0]] != img[matched == 0])
  # With 8 retries a shared image almost never blocks a mismatch: rate stays ~50%.
  ok, info = within_3_sigma((matched == 0).sum(), batch, 0.5)
  assert ok, info


def test_mismatch_impossible_when_the_batch_shares_one_image():
  new, matched = _mismatch(jax.random.PRNGKey(0), _sentences(32), jnp.zeros(32, jnp.int32))
  assert np.all(np.asarray(matched) == 1)
  np.testing.assert_array_equal(new["input_ids"], _sentences(32)["input_ids"])


def test_mismatch_draws_from_the_global_batch_across_devices():
  devices = jax.local_device_count()
  assert devices == 8, "conftest sets 8 fake CPU devices"
  per_device = 32
  sents = _sentences(devices * per_device)
  sents = jax.tree.map(lambda x: x.reshape(devices, per_device, -1), sents)
  # Every device holds ONE image: only the global pool offers other images.
  image_index = jnp.repeat(jnp.arange(devices, dtype=jnp.int32), per_device).reshape(devices, -1)

  def step(rng, s, img):
    rng = jax.random.fold_in(rng, jax.lax.axis_index("batch"))
    return corruption.mismatch_sentences(rng, s, img, axis_name="batch")

  new, matched = jax.pmap(step, axis_name="batch", in_axes=(None, 0, 0))(
    jax.random.PRNGKey(0), sents, image_index
  )
  matched = np.asarray(matched).reshape(-1)
  source_row = np.asarray(new["input_ids"]).reshape(-1, 6)[:, 0] // 6
  own_image = np.asarray(image_index).reshape(-1)
  assert np.all(own_image[source_row[matched == 0]] != own_image[matched == 0])
  ok, info = within_3_sigma((matched == 0).sum(), matched.size, 0.5)
  assert ok, info


def test_qa_label_sampling_proportional_to_score():
  draws = 4000
  ids = jnp.tile(jnp.array([[7, 3, 9, -1]]), (draws, 1))
  scores = jnp.tile(jnp.array([[0.6, 0.3, 0.9, 0.0]]), (draws, 1))
  ans = np.asarray(jax.jit(corruption.sample_qa_labels)(jax.random.PRNGKey(0), ids, scores))
  for answer, p in ((7, 1 / 3), (3, 1 / 6), (9, 1 / 2)):
    ok, info = within_3_sigma((ans == answer).sum(), draws, p)
    assert ok, info
  assert set(ans.tolist()) == {7, 3, 9}


def test_qa_label_edge_cases():
  ids = jnp.array([[5, -1], [-1, -1], [4, 6], [2, 8]])
  scores = jnp.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.3]])
  matched = jnp.array([1, 1, 1, 0])
  ans = np.asarray(
    corruption.sample_qa_labels(jax.random.PRNGKey(1), ids, scores, matched_label=matched)
  )
  assert ans[0] == 5  # a single answer is taken whatever its score (original)
  assert ans[1] == -1  # captions / pruned answers
  assert ans[2] in (4, 6)  # all-zero scores: uniform among answers
  assert ans[3] == -1  # mismatched pair (G12)


def test_corrupt_pretraining_batch_end_to_end():
  batch_size, seq_len, boxes, dim = 64, 12, 6, 5
  ids, mask = make_tokens(batch_size, seq_len, 200, seed=1)
  feats = jax.random.normal(jax.random.PRNGKey(2), (batch_size, boxes, dim))
  batch = {
    "input_ids": ids,
    "attention_mask": mask,
    "token_type_ids": jnp.zeros_like(ids),
    "visual_feats": feats,
    "visual_pos": jnp.full((batch_size, boxes, 4), 0.5),
    "answer_ids": jnp.tile(jnp.array([[3, -1]]), (batch_size, 1)),
    "answer_scores": jnp.tile(jnp.array([[1.0, 0.0]]), (batch_size, 1)),
    "image_index": jnp.arange(batch_size, dtype=jnp.int32),
  }
  fn = jax.jit(
    lambda rng, b: corruption.corrupt_pretraining_batch(
      rng, b, vocab_size=200, mask_token_id=MASK, special_token_ids=SPECIAL
    )
  )
  out = fn(jax.random.PRNGKey(0), batch)
  again = fn(jax.random.PRNGKey(0), batch)
  for key in out:
    np.testing.assert_array_equal(out[key], again[key], err_msg=key)
  assert out["lm_labels"].shape == (batch_size, seq_len)
  assert out["feat_mask"].shape == (batch_size, boxes)
  np.testing.assert_array_equal(out["feat_targets"], feats)  # targets are clean features
  np.testing.assert_array_equal(out["visual_pos"], batch["visual_pos"])  # boxes never change
  matched, ans = np.asarray(out["matched_label"]), np.asarray(out["ans"])
  np.testing.assert_array_equal(ans, np.where(matched == 1, 3, -1))
  assert 0 < matched.sum() < batch_size
  # Matched rows keep their own sentence: unmasked tokens and labels are the original ids.
  labels, new_ids = np.asarray(out["lm_labels"]), np.asarray(out["input_ids"])
  rows = matched == 1
  orig = np.asarray(ids)[rows]
  kept = labels[rows] == -1
  np.testing.assert_array_equal(new_ids[rows][kept], orig[kept])
  np.testing.assert_array_equal(labels[rows][~kept], orig[~kept])
  # Mismatched rows carry another example's sentence (its padding pattern comes along).
  assert np.all(np.asarray(out["attention_mask"])[labels != -1] == 1)
  with pytest.raises(KeyError, match="image_index"):
    corruption.corrupt_pretraining_batch(
      jax.random.PRNGKey(0),
      {k: v for k, v in batch.items() if k != "image_index"},
      vocab_size=200,
      mask_token_id=MASK,
      special_token_ids=SPECIAL,
    )
