"""Predictor: equals a direct model call, compiles once per bucket, rejects bad input clearly."""

import json
import warnings

import jax
import numpy as np
import pytest

from lxmert_jax.data.tokenization import WordPieceTokenizer
from lxmert_jax.inference import Predictor, load_answer_vocab
from lxmert_jax.models.config import tiny_config
from lxmert_jax.models.tasks import init_params
from lxmert_jax.pretrained import LxmertPretrained, save_params_orbax

WORDS = "what color is the shape circle red blue there a in image ? does not contain".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
QUESTIONS = [
  "what color is the shape?",
  "is there a red circle in the image?",
  "does the image not contain a blue shape?",
]
CONFIG = tiny_config()
NUM_BOXES = 5


def _boxes(rng, n):
  """[n, 4] valid normalised (x1, y1, x2, y2) boxes."""
  x1y1 = rng.uniform(0, 0.5, size=(n, 2))
  return np.concatenate([x1y1, x1y1 + rng.uniform(0.05, 0.5, size=(n, 2))], 1).astype(np.float32)


def _init(task, seed):
  return _init_config(CONFIG, seed, task)


def _init_config(config, seed, task="qa"):
  # Jitted: eager Flax init dispatches op by op and is slower than one compile.
  init = jax.jit(lambda key: init_params(config, task, key))
  return jax.tree.map(np.asarray, init(jax.random.key(seed)))


def _images(b, n=NUM_BOXES, seed=0):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(b, n, CONFIG.visual_feat_dim)).astype(np.float32)
  return feats, np.stack([_boxes(rng, n) for _ in range(b)])


# Tiny models: XLA's optimisation passes cost far more than they save (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def qa_model():
  return LxmertPretrained(CONFIG, _init("qa", 0), "qa")


@pytest.fixture(scope="module")
def answers():
  return [f"answer {i}" for i in range(CONFIG.num_qa_labels)]


@pytest.fixture(scope="module")
def predictor(qa_model, answers, vocab_path):
  return Predictor(qa_model, answers, vocab_path)


def _direct(model, vocab_path, questions, feats, pos, **kwargs):
  input_ids, mask = WordPieceTokenizer(vocab_path).encode_padded(questions)
  return model(input_ids, feats, pos, mask, **kwargs)


def test_predict_equals_direct_model_call(predictor, qa_model, vocab_path):
  feats, pos = _images(3)
  preds = predictor.predict(QUESTIONS, feats, pos, top_k=4)
  want = np.asarray(_direct(qa_model, vocab_path, QUESTIONS, feats, pos).question_answering_score)
  got = np.stack([p.logits for p in preds])
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  for p, row in zip(preds, want):
    order = np.argsort(-row)[:4]
    assert [a.index for a in p.top] == list(order)
    assert [a.text for a in p.top] == [f"answer {i}" for i in order]
    # Sigmoid per answer, as the BCE-trained head means it.
    np.testing.assert_allclose([a.prob for a in p.top], 1 / (1 + np.exp(-row[order])), rtol=1e-6)
    np.testing.assert_allclose([a.logit for a in p.top], row[order], atol=1e-6)
    assert p.tokens[0] == "[CLS]" and p.tokens[-1] == "[SEP]"
    np.testing.assert_array_equal(p.boxes, pos[preds.index(p)])


def test_single_question_and_shared_image(predictor):
  feats, pos = _images(1)
  one = predictor.predict(QUESTIONS[1], feats[0], pos[0])
  assert one.answer == one.top[0].text and len(one.top) == 5
  shared = predictor.predict(QUESTIONS, feats[0], pos[0])
  np.testing.assert_allclose(shared[1].logits, one.logits, atol=1e-6)


def test_softmax_probabilities(predictor, answers, monkeypatch):
  feats, pos = _images(1)
  monkeypatch.setattr(predictor, "probability", "softmax")
  pred = predictor.predict(QUESTIONS[0], feats[0], pos[0], top_k=len(answers))
  assert pred.probability == "softmax"
  assert abs(sum(a.prob for a in pred.top) - 1) < 1e-9
  e = np.exp(pred.logits - pred.logits.max())
  np.testing.assert_allclose([a.prob for a in pred.top], np.sort(e / e.sum())[::-1], rtol=1e-6)


def test_compiles_once_per_bucket(qa_model, answers, vocab_path):
  p = Predictor(qa_model, answers, vocab_path, batch_buckets=(1, 4))
  feats, pos = _images(9)
  questions = [QUESTIONS[i % 3] for i in range(9)]
  for b in (1, 1, 2, 3, 4, 1):
    p.predict(questions[:b], feats[:b], pos[:b])
  assert dict(p.compilations) == {
    (1, 20, NUM_BOXES, False, False): 1,
    (4, 20, NUM_BOXES, False, False): 1,
  }
  # 9 questions run as chunks of 4, 4, 1: no new shapes, and the same answers as one by one.
  preds = p.predict(questions, feats, pos)
  assert p.num_compilations == 2
  for i in (0, 5, 8):
    single = p.predict(questions[i], feats[i], pos[i])
    np.testing.assert_allclose(preds[i].logits, single.logits, atol=1e-6)
  assert p.num_compilations == 2


def test_attention_maps_equal_direct_call(predictor, qa_model, vocab_path):
  feats, pos = _images(2)
  preds = predictor.predict(QUESTIONS[:2], feats, pos, output_attentions=True)
  # Attention maps are a separate output signature, compiled once for the bucket.
  assert predictor.compilations[(8, 20, NUM_BOXES, False, True)] == 1
  out = _direct(qa_model, vocab_path, QUESTIONS[:2], feats, pos, output_attentions=True)
  for i, p in enumerate(preds):
    t = len(p.tokens)
    maps = p.attentions
    assert maps.language.shape == (CONFIG.l_layers, CONFIG.num_attention_heads, t, t)
    assert maps.vision.shape == (CONFIG.r_layers, CONFIG.num_attention_heads, NUM_BOXES, NUM_BOXES)
    assert maps.language_to_vision.shape == (CONFIG.x_layers, 4, t, NUM_BOXES)
    assert maps.vision_to_language.shape == (CONFIG.x_layers, 4, NUM_BOXES, t)
    want = np.stack(out.cross_encoder_attentions)[:, i, :, :t]
    np.testing.assert_allclose(maps.language_to_vision, want, atol=1e-6)
    want = np.stack(out.cross_encoder_attentions_vision_to_language)[:, i, :, :, :t]
    np.testing.assert_allclose(maps.vision_to_language, want, atol=1e-6)
    # Padding tokens are cut, so each box's attention over the real tokens sums to one.
    np.testing.assert_allclose(maps.vision_to_language.sum(-1), 1, atol=1e-5)


def test_images_with_different_box_counts(predictor):
  feats, pos = _images(2, n=NUM_BOXES)
  short = (feats[1, :3], pos[1, :3])
  preds = predictor.predict(
    QUESTIONS[:2], [feats[0], short[0]], [pos[0], short[1]], output_attentions=True
  )
  alone = predictor.predict(QUESTIONS[1], *short)
  # Padded boxes are masked out of attention: the answer equals the unpadded call.
  np.testing.assert_allclose(preds[1].logits, alone.logits, atol=1e-5)
  assert preds[1].boxes.shape == (3, 4)
  assert preds[1].attentions.language_to_vision.shape[-1] == 3


def test_nlvr2_pair_prediction(vocab_path):
  model = LxmertPretrained(CONFIG, _init("nlvr2", 1), "nlvr2")
  p = Predictor(model, tokenizer=vocab_path, batch_buckets=(2,))
  feats, pos = _images(4)
  feats, pos = feats.reshape(2, 2, NUM_BOXES, -1), pos.reshape(2, 2, NUM_BOXES, 4)
  preds = p.predict_pair(QUESTIONS[:2], feats, pos)
  logits = np.asarray(_direct(model, vocab_path, QUESTIONS[:2], feats, pos).logits)
  for pred, row in zip(preds, logits):
    np.testing.assert_allclose(pred.logits, row, atol=1e-6)
    true_prob = np.exp(row[1]) / np.exp(row).sum()
    assert abs(pred.prob - true_prob) < 1e-6
    assert pred.label == (row[1] > row[0])
  single = p.predict_pair(QUESTIONS[0], feats[0], pos[0])
  np.testing.assert_allclose(single.logits, preds[0].logits, atol=1e-6)
  with pytest.raises(ValueError, match="predict_pair"):
    p.predict(QUESTIONS[0], feats[0, 0], pos[0, 0])
  with pytest.raises(ValueError, match=r"feats_pair.*\[2, N, F\]"):
    p.predict_pair(QUESTIONS[0], feats[0, 0], pos[0, 0, :, :])
  with pytest.raises(ValueError, match="3 statements but feats_pair holds 2"):
    p.predict_pair(QUESTIONS, feats, pos)


def test_bad_inputs_raise_clear_errors(predictor):
  feats, pos = _images(2)
  with pytest.raises(
    ValueError, match=r"visual_feats must be \[num_boxes, 11\].*got shape \(5, 7\)"
  ):
    predictor.predict(QUESTIONS[0], feats[0, :, :7], pos[0])
  with pytest.raises(ValueError, match=r"visual_pos must be \[num_boxes=5, 4\]"):
    predictor.predict(QUESTIONS[0], feats[0], pos[0, :4])
  with pytest.raises(ValueError, match="question 1 is empty"):
    predictor.predict([QUESTIONS[0], "  "], feats, pos)
  with pytest.raises(ValueError, match="got 3 questions but visual_feats holds 2 images"):
    predictor.predict(QUESTIONS, feats, pos)
  with pytest.raises(ValueError, match="NaN or inf"):
    predictor.predict(QUESTIONS[0], np.full_like(feats[0], np.nan), pos[0])
  with pytest.raises(ValueError, match="has no boxes"):
    predictor.predict(QUESTIONS[0], feats[0, :0], pos[0, :0])
  with pytest.raises(ValueError, match="top_k must be >= 1"):
    predictor.predict(QUESTIONS[0], feats[0], pos[0], top_k=0)
  with pytest.raises(TypeError, match="question 0 must be a string"):
    predictor.predict([3], feats[0], pos[0])


def test_checkpoint_mismatches_raise(qa_model, answers, vocab_path):
  with pytest.raises(ValueError, match="12 entries but the checkpoint's answer head has 13"):
    Predictor(qa_model, answers[:-1], vocab_path)
  backbone = LxmertPretrained(CONFIG, qa_model.params["lxmert"], "backbone")
  with pytest.raises(ValueError, match="no answer head"):
    Predictor(backbone, answers, vocab_path)
  with pytest.raises(ValueError, match="no tokenizer given"):
    Predictor(qa_model, answers)
  with pytest.raises(ValueError, match="probability must be one of"):
    Predictor(qa_model, answers, vocab_path, probability="relu")
  with pytest.raises(ValueError, match="no easy-VQA feature scaling"):
    Predictor(qa_model, answers, vocab_path).image_features(np.zeros((8, 8, 3), np.uint8))


def test_more_boxes_than_trained_warns(predictor, monkeypatch):
  feats, pos = _images(1)
  monkeypatch.setattr(predictor, "max_boxes", NUM_BOXES - 1)
  with pytest.warns(UserWarning, match="5 boxes but this checkpoint was trained with 4"):
    predictor.predict(QUESTIONS[0], feats[0], pos[0])
  monkeypatch.setattr(predictor, "max_boxes", NUM_BOXES)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    predictor.predict(QUESTIONS[0], feats[0], pos[0])


@pytest.mark.parametrize("fmt", ["orbax", "transformers"])
def test_predictor_from_checkpoint_directory(tmp_path, qa_model, answers, vocab_path, fmt):
  from lxmert_jax.convert.to_hf import save_pretrained_hf

  save = save_params_orbax if fmt == "orbax" else save_pretrained_hf
  save(qa_model, tmp_path / "ckpt")
  (tmp_path / "ckpt" / "vocab.txt").write_text(open(vocab_path).read())
  (tmp_path / "ckpt" / "answers.json").write_text(json.dumps(answers))
  p = Predictor(str(tmp_path / "ckpt"))
  # Same weights, vocabulary and tokenizer as the in-memory model, hence the same answers.
  jax.tree.map(np.testing.assert_allclose, p.loaded.params, qa_model.params)
  assert p.answers == answers and p.task == "qa"
  assert p.tokenizer.convert_ids_to_tokens(range(len(VOCAB))) == VOCAB


def test_answer_vocab_formats(tmp_path):
  (tmp_path / "a.json").write_text(json.dumps({"yes": 1, "": 0, "two": 2}))
  assert load_answer_vocab(str(tmp_path / "a.json")) == ["", "yes", "two"]
  (tmp_path / "b.json").write_text(json.dumps({"answers": ["x", "y"]}))
  assert load_answer_vocab(str(tmp_path / "b.json")) == ["x", "y"]
  # Text files keep an empty first answer (VQA's label 0 is '').
  (tmp_path / "c.txt").write_text("\nyes\nno\n")
  assert load_answer_vocab(str(tmp_path / "c.txt")) == ["", "yes", "no"]
  (tmp_path / "d.json").write_text(json.dumps({"a": 0, "b": 2}))
  with pytest.raises(ValueError, match="indices are not 0..1"):
    load_answer_vocab(str(tmp_path / "d.json"))
  with pytest.raises(ValueError, match="none of"):
    load_answer_vocab(None, str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Training workdirs and the lxmert-jax-predict CLI.

EASY_VQA_CONFIG = tiny_config(visual_feat_dim=90, num_qa_labels=13)


def _write_workdir(root, model, answers, vocab_path, images):
  """A workdir as lxmert_jax.train leaves it: checkpoints/<step>/..., vocab.txt, data_dir."""
  from types import SimpleNamespace

  from lxmert_jax import checkpoint as ckpt
  from lxmert_jax.easy_vqa import features

  data_dir = root / "data"
  data_dir.mkdir(parents=True)
  raw = np.concatenate([features.extract_regions(im).features for im in images])
  scaling = features.FeatureScaling.fit(raw).to_dict()
  info = {"num_boxes": 36, "feat_dim": 90, "easy_vqa": {"feature_scaling": scaling}}
  (data_dir / "dataset_info.json").write_text(json.dumps(info))
  (root / "vocab.txt").write_text(open(vocab_path).read())
  mngr = ckpt.make_manager(ckpt.checkpoint_dir(str(root)), async_save=False)
  state = SimpleNamespace(params=model.params, step=np.int32(7), opt_state={})
  config = {"task": "easy_vqa", "data": {"data_dir": str(data_dir), "max_seq_length": 12}}
  ckpt.save_checkpoint(mngr, 7, state, config=config, model_config=model.config, answers=answers)
  mngr.close()
  return scaling


@pytest.fixture(scope="module")
def easy_vqa_workdir(tmp_path_factory, vocab_path):
  import easy_vqa

  from lxmert_jax.easy_vqa.features import load_image

  root = tmp_path_factory.mktemp("workdir")
  paths = easy_vqa.get_test_image_paths()
  images = [load_image(paths[i]) for i in range(4)]
  model = LxmertPretrained(EASY_VQA_CONFIG, _init_config(EASY_VQA_CONFIG, 2), "qa")
  answers = easy_vqa.get_answers()
  scaling = _write_workdir(root, model, answers, vocab_path, images)
  return root, model, answers, scaling, paths[0]


def test_from_workdir_reads_the_training_checkpoint(easy_vqa_workdir):
  from lxmert_jax.easy_vqa import features

  root, model, answers, scaling, image_path = easy_vqa_workdir
  p = Predictor.from_workdir(str(root))
  jax.tree.map(np.testing.assert_array_equal, p.loaded.params, model.params)
  assert p.answers == answers and p.task == "qa" and p.config == EASY_VQA_CONFIG
  # The run's text length and box count, not the defaults.
  assert p.tokenizer.max_seq_length == 12 and p.seq_buckets == (12,) and p.max_boxes == 36
  feats, boxes = p.image_features(image_path)
  want = features.extract_regions(image_path, scaling=features.FeatureScaling.from_dict(scaling))
  np.testing.assert_array_equal(feats, want.features)
  np.testing.assert_array_equal(boxes, want.boxes)
  assert feats.shape == (36, 90)


def test_from_workdir_without_a_model_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no trained model in .*python -m lxmert_jax.main"):
    Predictor.from_workdir(str(tmp_path))


def test_predict_cli(easy_vqa_workdir, tmp_path, capsys):
  from lxmert_jax import predict

  root, model, answers, _, image_path = easy_vqa_workdir
  png = tmp_path / "attention.png"
  question = "what color is the shape?"
  argv = [f"--workdir={root}", "--image", image_path, "--question", question]
  assert predict.main(argv + ["--top_k", "3", "--attention_png", str(png)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == f"Q: {question}" and lines[-1] == f"attention figure: {png}"
  p = Predictor.from_workdir(str(root))
  want = p.predict(question, *p.image_features(image_path), top_k=3)
  for rank, (line, answer) in enumerate(zip(lines[1:4], want.top), 1):
    assert line.split() == [
      f"{rank}.",
      *answer.text.split(),
      f"p={answer.prob:.4f}",
      "(logit",
      f"{answer.logit:+.3f})",
    ]
  assert png.read_bytes()[:4] == b"\x89PNG"
  # Errors: exit status 1 (or 2 for a missing image) and a message naming the problem.
  assert predict.main(["--workdir", str(tmp_path), "--image", image_path, "--question", "q?"]) == 1
  assert "no trained model in" in capsys.readouterr().err
  assert predict.main(argv[:1] + ["--image", str(tmp_path / "x.png"), "--question", "q"]) == 2
  assert "x.png not found" in capsys.readouterr().err
  assert predict.main(argv[:3] + ["--question", " "]) == 1
  assert "question 0 is empty" in capsys.readouterr().err


def test_probabilities_at_extreme_logits():
  from lxmert_jax.inference import _normalise

  logits = np.array([[-1000.0, -30.0, 0.0, 30.0, 1000.0]])
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no overflow on the way
    sig = _normalise(logits, "sigmoid")
    soft = _normalise(logits, "softmax")
  np.testing.assert_allclose(sig, [[0.0, 1 / (1 + np.exp(30)), 0.5, 1 / (1 + np.exp(-30)), 1.0]])
  np.testing.assert_allclose(soft, [[0, 0, 0, 0, 1]], atol=1e-300)
