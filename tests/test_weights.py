"""Weight loading and export: name table coverage, round trips, checkpoint formats, clear errors.

No XLA compiles here (parameters are compared directly); forward parity is in
test_model_parity.py and test_heads_parity.py.
"""

import collections
import json
import os
import pickle
import shutil

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from flax import traverse_util
from flax.training import train_state
from safetensors.numpy import load_file, save_file

from lxmert_jax.convert import param_map
from lxmert_jax.convert.from_pytorch import WeightLoadError, convert_state_dict
from lxmert_jax.convert.to_hf import save_pretrained_hf
from lxmert_jax.models.config import LxmertConfig, tiny_config
from lxmert_jax.models.tasks import param_shapes
from lxmert_jax.pretrained import (
  CONFIG_FILE,
  LxmertPretrained,
  load_params_from_orbax,
  load_pretrained,
  save_params_orbax,
)

CONFIG = tiny_config()
HF_CLASSES = {
  "backbone": transformers.LxmertModel,
  "pretraining": transformers.LxmertForPreTraining,
  "qa": transformers.LxmertForQuestionAnswering,
}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  """task -> (transformers model with random weights, its save_pretrained directory)."""
  out = {}
  for seed, (task, cls) in enumerate(HF_CLASSES.items()):
    torch.manual_seed(seed)
    model = cls(transformers.LxmertConfig(**CONFIG.to_hf_dict())).eval()
    directory = tmp_path_factory.mktemp(f"hf_{task}")
    model.save_pretrained(directory)
    out[task] = (model, directory)
  return out


def flat(params):
  return traverse_util.flatten_dict(params)


def assert_params_equal(a, b):
  a, b = flat(a), flat(b)
  assert set(a) == set(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg="/".join(key))


# --------------------------------------------------------------------------- name table


@pytest.mark.parametrize("task", param_map.TASKS)
def test_param_table_covers_the_model_tree(task):
  table = param_map.param_table(CONFIG, task)
  assert {m.flax_path for m in table} == set(flat(param_shapes(CONFIG, task)))
  assert len({m.torch_key for m in table}) == len(table)


@pytest.mark.parametrize("task", ["backbone", "pretraining", "qa"])
def test_param_table_covers_transformers_keys(hf, task):
  model, _ = hf[task]
  keys = {m.torch_key for m in param_map.param_table(CONFIG, task)}
  if task == "backbone":
    keys = {k[len("lxmert.") :] for k in keys}
  assert keys == set(model.state_dict()) - {param_map.TIED_DECODER_KEY}


def test_base_parameter_counts():
  """LXMERT-base sizes (spec 1.1), via jax.eval_shape: nothing is allocated."""

  def count(task):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(LxmertConfig(), task)))

  assert count("backbone") == 207_936_768
  assert count("pretraining") == 228_051_752


# --------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("task", ["backbone", "pretraining", "qa"])
def test_transformers_round_trip_is_bit_exact(hf, task, tmp_path):
  model, directory = hf[task]
  loaded = load_pretrained(directory)
  assert loaded.task == task and loaded.config == CONFIG
  assert loaded.load_report.dropped == []
  out = save_pretrained_hf(loaded, tmp_path / "export")

  original = load_file(os.path.join(directory, "model.safetensors"))
  exported = load_file(os.path.join(out, "model.safetensors"))
  assert set(exported) == set(original)
  for key in original:
    assert exported[key].dtype == original[key].dtype
    np.testing.assert_array_equal(exported[key], original[key], err_msg=key)

  reloaded, info = HF_CLASSES[task].from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert not info["mismatched_keys"] and not info["error_msgs"]
  for key, value in model.state_dict().items():
    assert torch.equal(reloaded.state_dict()[key], value), key


def test_config_forms_are_equivalent(hf):
  _, directory = hf["qa"]
  reference = load_pretrained(directory)
  for config in (
    CONFIG,
    CONFIG.to_dict(),
    transformers.LxmertConfig(**CONFIG.to_hf_dict()),
    str(directory / "config.json"),
  ):
    loaded = load_pretrained(directory, config=config)
    assert loaded.config == reference.config
    assert_params_equal(loaded.params, reference.params)


def test_unused_heads_are_dropped_and_reported(hf):
  _, directory = hf["pretraining"]
  full = load_pretrained(directory)
  backbone = load_pretrained(directory, task="backbone")
  assert backbone.task == "backbone"
  assert_params_equal(backbone.params, full.params["lxmert"])
  reasons = dict(backbone.load_report.dropped)
  assert reasons["cls.predictions.bias"] == "cls head is not part of task 'backbone'"
  assert "obj_predict_head.decoder_dict.feat.weight" in reasons
  assert "answer_head.logit_fc.3.weight" in reasons
  assert "dropped cls.predictions.bias" in str(backbone.load_report)

  qa = load_pretrained(directory, task="qa")
  assert set(qa.params) == {"lxmert", "answer_head"}
  assert_params_equal(qa.params["answer_head"], full.params["answer_head"])
  assert {k.split(".")[0] for k, _ in qa.load_report.dropped} == {"cls", "obj_predict_head"}


def test_export_of_nlvr2_is_refused(tmp_path):
  shapes = param_shapes(CONFIG, "nlvr2")
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  with pytest.raises(ValueError, match="no transformers class"):
    save_pretrained_hf(LxmertPretrained(CONFIG, params, "nlvr2"), tmp_path / "out")
  assert not (tmp_path / "out" / "model.safetensors").exists()


# --------------------------------------------------------------------------- original checkpoints


def renamed(state, renames):
  out = collections.OrderedDict()
  for key, value in state.items():
    for old, new in renames:
      if key.startswith(old):
        key = new + key[len(old) :]
        break
    out[key] = value.clone()
  return out


def test_original_vqa_finetuned_checkpoint(hf, tmp_path):
  """``BEST.pth`` of VQAModel trained with --multiGPU: lxrt_encoder.model.module.bert.* + logit_fc.*."""
  model, directory = hf["qa"]
  state = renamed(
    model.state_dict(),
    [("lxmert.", "lxrt_encoder.model.module.bert."), ("answer_head.logit_fc.", "logit_fc.")],
  )
  torch.save(state, tmp_path / "BEST.pth")
  loaded = load_pretrained(tmp_path / "BEST.pth", config=CONFIG)
  assert loaded.task == "qa" and loaded.load_report.source_format == "original"
  assert_params_equal(loaded.params, load_pretrained(directory).params)


def test_original_nlvr2_finetuned_checkpoint(hf, tmp_path):
  """NLVR2Model: backbone + logit_fc whose first layer reads 2H (two pooled vectors)."""
  model, directory = hf["backbone"]
  hidden = CONFIG.hidden_size
  state = renamed(model.state_dict(), [("", "lxrt_encoder.model.bert.")])
  gen = torch.Generator().manual_seed(0)
  head = {
    "logit_fc.0.weight": torch.randn(2 * hidden, 2 * hidden, generator=gen),
    "logit_fc.0.bias": torch.randn(2 * hidden, generator=gen),
    "logit_fc.2.weight": torch.randn(2 * hidden, generator=gen),
    "logit_fc.2.bias": torch.randn(2 * hidden, generator=gen),
    "logit_fc.3.weight": torch.randn(2, 2 * hidden, generator=gen),
    "logit_fc.3.bias": torch.randn(2, generator=gen),
  }
  torch.save({**state, **head}, tmp_path / "BEST.pth")
  loaded = load_pretrained(tmp_path / "BEST.pth", config=CONFIG)
  assert loaded.task == "nlvr2"
  fc = loaded.params["answer_head"]["logit_fc"]
  np.testing.assert_array_equal(fc["0"]["kernel"], head["logit_fc.0.weight"].numpy().T)
  np.testing.assert_array_equal(fc["2"]["scale"], head["logit_fc.2.weight"].numpy())
  np.testing.assert_array_equal(fc["3"]["kernel"], head["logit_fc.3.weight"].numpy().T)
  assert_params_equal(loaded.params["lxmert"], load_pretrained(directory).params)


def random_original_state(config, seed=0):
  """Original pre-training names (``module.bert.*`` + heads) with random values."""
  rng = np.random.default_rng(seed)
  shapes = flat(param_shapes(config, "pretraining"))
  state = {}
  for m in param_map.param_table(config, "pretraining"):
    key = m.torch_key.replace("lxmert.", "bert.", 1)
    state["module." + key] = rng.normal(size=m.torch_shape(shapes[m.flax_path].shape)).astype(
      np.float32
    )
  return state


def test_config_is_inferred_from_shapes():
  """No config: LXMERT-base is assumed and every size the shapes reveal is read from them."""
  config = LxmertConfig(
    vocab_size=50,
    intermediate_size=37,
    l_layers=2,
    r_layers=1,
    x_layers=1,
    visual_feat_dim=11,
    num_qa_labels=13,
    num_object_labels=17,
    num_attr_labels=7,
    max_position_embeddings=20,
  )  # hidden 768 / 12 heads as LXMERT-base
  params, inferred, report = convert_state_dict(random_original_state(config))
  assert inferred == config
  assert report.config_source == "inferred from shapes" and report.task == "pretraining"

  with pytest.raises(WeightLoadError, match="pass config="):
    convert_state_dict(random_original_state(CONFIG))  # hidden 32: head count unknowable


# --------------------------------------------------------------------------- errors


def test_every_problem_is_listed_in_one_error(hf, tmp_path):
  _, directory = hf["pretraining"]
  state = load_file(os.path.join(directory, "model.safetensors"))
  del state["lxmert.encoder.x_layers.1.visn_output.dense.bias"]  # missing
  state["lxmert.pooler.dense.weight"] = np.zeros((32, 31), np.float32)  # wrong shape
  state["lxmert.encoder.x_layers.0.lang_attention.att.query.weight"] = np.zeros(
    (32, 32), np.float32
  )
  broken = tmp_path / "broken"
  broken.mkdir()
  shutil.copy(directory / "config.json", broken / "config.json")
  save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(WeightLoadError) as error:
    load_pretrained(broken)
  message = str(error.value)
  assert str(broken / "model.safetensors") in message
  assert (
    "missing weights (1):\n  lxmert.encoder.x_layers.1.visn_output.dense.bias (expected shape [32])"
    in message
  )
  assert "lxmert.pooler.dense.weight: checkpoint shape [32, 31], model expects [32, 32]" in message
  assert (
    "unexpected weights (1):\n  lxmert.encoder.x_layers.0.lang_attention.att.query.weight"
    in message
  )


def test_config_that_does_not_match_the_weights(hf):
  _, directory = hf["qa"]
  with pytest.raises(
    WeightLoadError,
    match=r"answer_head.logit_fc.3.weight: checkpoint shape \[13, 64\], model expects \[5, 64\]",
  ):
    load_pretrained(directory, config=CONFIG.replace(num_qa_labels=5))
  with pytest.raises(WeightLoadError, match=r"missing weights \(16\)"):  # one more BertLayer
    load_pretrained(directory, config=CONFIG.replace(r_layers=2))


def test_nonexistent_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope_LXRT.pth"):
    load_pretrained(tmp_path / "nope_LXRT.pth")


class _Exploit:
  """Unpickling this runs a shell command; a weights-only loader must refuse it."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused(tmp_path, writer):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil_LXRT.pth"
  payload = {"module.bert.embeddings.word_embeddings.weight": _Exploit(marker)}
  if writer == "torch.save":
    torch.save(payload, path)
  else:
    with open(path, "wb") as f:
      pickle.dump(payload, f, protocol=2)
  with pytest.raises(WeightLoadError, match="refused to load") as error:
    load_pretrained(path, config=CONFIG)
  assert str(path) in str(error.value)
  assert not marker.exists()


# --------------------------------------------------------------------------- Orbax


def test_orbax_params_directory_round_trip(hf, tmp_path):
  _, directory = hf["pretraining"]
  loaded = load_pretrained(directory)
  save_params_orbax(loaded, tmp_path / "ours")
  assert json.loads((tmp_path / "ours" / CONFIG_FILE).read_text())["l_layers"] == CONFIG.l_layers
  again = load_pretrained(tmp_path / "ours")
  assert again.task == "pretraining" and again.config == CONFIG
  assert again.load_report.source_format == "orbax"
  assert_params_equal(again.params, loaded.params)
  backbone = load_pretrained(tmp_path / "ours", task="backbone")
  assert_params_equal(backbone.params, loaded.params["lxmert"])


def test_orbax_checkpoint_manager_layout(hf, tmp_path):
  """The training layout: <workdir>/checkpoints/<step>/<item>/ holding a whole TrainState."""
  _, directory = hf["qa"]
  base = load_pretrained(directory).params
  workdir = tmp_path / "workdir"
  manager = ocp.CheckpointManager(workdir / "checkpoints")
  states = {}
  for step in (10, 20):
    params = jax.tree.map(lambda x, s=step: x + s, base)
    states[step] = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adamw(1e-3))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(states[step])))
  manager.wait_until_finished()
  (workdir / CONFIG_FILE).write_text(json.dumps(CONFIG.to_dict()))

  for path, step in (
    (workdir, 20),
    (workdir / "checkpoints", 20),
    (workdir / "checkpoints" / "10", 10),
    (workdir / "checkpoints" / "10" / "state", 10),
  ):
    loaded = load_pretrained(path)
    assert loaded.task == "qa" and loaded.config == CONFIG, path
    assert_params_equal(loaded.params, jax.tree.map(np.asarray, states[step].params))

  params, item = load_params_from_orbax(workdir)
  assert item == workdir / "checkpoints" / "20" / "state"

  (workdir / CONFIG_FILE).unlink()
  with pytest.raises(WeightLoadError, match=CONFIG_FILE):
    load_pretrained(workdir)
  assert load_pretrained(workdir, config=CONFIG).task == "qa"


def test_transformers_directory_variants(hf, tmp_path):
  """Hub-style pytorch_model.bin (with the tied decoder copy) and sharded safetensors."""
  model, directory = hf["pretraining"]
  reference = load_pretrained(directory)

  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  shutil.copy(directory / "config.json", bin_dir / "config.json")
  torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
  from_bin = load_pretrained(bin_dir)
  assert_params_equal(from_bin.params, reference.params)
  assert dict(from_bin.load_report.dropped) == {
    "cls.predictions.decoder.weight": "tied to lxmert.embeddings.word_embeddings.weight"
  }

  sharded = tmp_path / "sharded"
  sharded.mkdir()
  shutil.copy(directory / "config.json", sharded / "config.json")
  state = load_file(os.path.join(directory, "model.safetensors"))
  keys = sorted(state)
  weight_map = {}
  for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
    name = f"model-0000{i + 1}-of-00002.safetensors"
    save_file({k: state[k] for k in part}, str(sharded / name), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(part, name))
  (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  assert_params_equal(load_pretrained(sharded).params, reference.params)


def test_conversion_cli(hf, tmp_path):
  from lxmert_jax.convert.from_pytorch import main

  model, directory = hf["qa"]
  pth = tmp_path / "BEST.pth"
  torch.save(
    renamed(model.state_dict(), [("lxmert.", "lxrt_encoder.model.bert."), ("answer_head.", "")]),
    pth,
  )
  main(
    [
      "--input",
      str(pth),
      "--output",
      str(tmp_path / "out"),
      "--config",
      str(directory / "config.json"),
    ]
  )
  assert_params_equal(load_pretrained(tmp_path / "out").params, load_pretrained(directory).params)
  with pytest.raises(SystemExit, match="already exists"):
    main(["--input", str(pth), "--output", str(tmp_path / "out")])
  with pytest.raises(SystemExit, match="pass config="):
    main(["--input", str(pth), "--output", str(tmp_path / "out2")])
  assert not (tmp_path / "out2").exists()
