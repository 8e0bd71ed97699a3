"""BertAdam vs a direct numpy transcription of its update rule, and the warmup_linear schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lxmert_jax import optim


def np_warmup_linear(x, w):
  return x / w if x < w else max((x - 1.0) / (w - 1.0), 0.0)


def np_bert_adam(params, grads_per_step, lr, t_total, warmup, wd, max_norm, b1=0.9, b2=0.999):
  """Transcription of the original: clip_grad_norm_ outside, then BertAdam.step (float64)."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  for step, grads in enumerate(grads_per_step):
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    coef = max_norm / (norm + 1e-6)
    grads = {k: g * coef if coef < 1 else g.astype(np.float64) for k, g in grads.items()}
    lr_t = lr * np_warmup_linear(step / t_total, warmup)
    for k in params:
      m[k] = b1 * m[k] + (1 - b1) * grads[k]
      v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
      update = m[k] / (np.sqrt(v[k]) + 1e-6) + wd * params[k]
      params[k] = params[k] - lr_t * update
  return params


def _tree(rng):
  return {
    "kernel": rng.normal(size=(3, 4)).astype(np.float32),
    "bias": rng.normal(size=(4,)).astype(np.float32),
    "scale": np.ones((4,), np.float32),  # LayerNorm scale: decayed too (G13)
  }


@pytest.mark.parametrize("max_norm", [1.0, 100.0])  # clipping active / inactive
def test_bert_adam_matches_numpy_transcription(max_norm):
  rng = np.random.default_rng(0)
  params = _tree(rng)
  steps, t_total, warmup, lr, wd = 6, 10, 0.2, 0.1, 0.01
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}]
  grads += [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}]
  grads = [grads[i % 2] for i in range(steps)]
  grads[3]["bias"] = np.zeros_like(grads[3]["bias"])  # zero grads still decay
  tx = optim.bert_adam(lr, t_total, warmup, weight_decay=wd, max_grad_norm=max_norm)

  @jax.jit
  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  p, state = jax.tree.map(jnp.asarray, params), tx.init(params)
  for g in grads:
    p, state = step(p, state, g)
  want = np_bert_adam(params, grads, lr, t_total, warmup, wd, max_norm)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), want[k], atol=1e-6, err_msg=k)


def test_first_update_uses_learning_rate_zero():
  params = {"w": jnp.ones((2,))}
  tx = optim.bert_adam(1.0, 10, 0.1)
  updates, _ = tx.update({"w": jnp.ones((2,))}, tx.init(params), params)
  np.testing.assert_array_equal(updates["w"], 0.0)


def test_schedule_endpoints_and_shape():
  lr, total, w = 1e-4, 1000, 0.05
  sched = optim.warmup_linear_schedule(lr, total, w)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(25)), lr / 2, rtol=1e-6)  # half way up
  np.testing.assert_allclose(float(sched(50)), lr, rtol=1e-6)  # peak at x = w
  np.testing.assert_allclose(float(sched(525)), lr / 2, rtol=1e-5)  # half way down
  assert float(sched(1000)) == 0.0 and float(sched(1500)) == 0.0
  for count in (0, 7, 50, 333, 999):
    np.testing.assert_allclose(float(sched(count)), lr * np_warmup_linear(count / total, w), 1e-5)
  for x in (0.0, 0.02, 0.05, 0.4, 1.0, 1.3):
    np.testing.assert_allclose(float(optim.warmup_linear(x, w)), np_warmup_linear(x, w), 1e-6)
  with pytest.raises(ValueError, match="warmup"):
    optim.warmup_linear_schedule(lr, total, 1.0)


def test_clip_matches_torch_clip_grad_norm():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  grads = {"a": rng.normal(size=(5,)).astype(np.float32), "b": rng.normal(size=(2, 3)) * 4}
  grads = {k: v.astype(np.float32) for k, v in grads.items()}
  tensors = [torch.nn.Parameter(torch.zeros(v.shape)) for v in grads.values()]
  for t, g in zip(tensors, grads.values()):
    t.grad = torch.from_numpy(g.copy())
  torch.nn.utils.clip_grad_norm_(tensors, 1.0)
  clip = optim.clip_by_global_norm(1.0)
  ours, _ = clip.update(jax.tree.map(jnp.asarray, grads), clip.init(grads))
  for t, key in zip(tensors, grads):
    np.testing.assert_allclose(np.asarray(ours[key]), t.grad.numpy(), rtol=1e-6)


def test_gradient_accumulation_equals_one_step_on_mean_gradient():
  rng = np.random.default_rng(4)
  params = _tree(rng)
  g1 = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
  g2 = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  kwargs = dict(learning_rate=0.1, total_steps=4, warmup_fraction=0.0, max_grad_norm=1.0)
  plain, accum = optim.bert_adam(**kwargs), optim.bert_adam(**kwargs, accumulation_steps=2)
  p_plain, s_plain = params, plain.init(params)
  p_acc, s_acc = params, accum.init(params)
  for _ in range(2):  # two real updates
    u, s_plain = plain.update(mean, s_plain, p_plain)
    p_plain = optax.apply_updates(p_plain, u)
    for g in (g1, g2):
      u, s_acc = accum.update(g, s_acc, p_acc)
      p_acc = optax.apply_updates(p_acc, u)
  for k in params:
    np.testing.assert_allclose(np.asarray(p_acc[k]), np.asarray(p_plain[k]), atol=1e-6)
    assert not np.allclose(np.asarray(p_acc[k]), params[k])


def test_bias_correction_equals_optax_adam_and_differs_without_it():
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  grads = [{"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)} for _ in range(6)]
  ours = optim.scale_by_bert_adam(eps=1e-6, bias_correction=True)
  plain = optim.scale_by_bert_adam(eps=1e-6)
  ref = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6)
  states = [t.init(params) for t in (ours, plain, ref)]
  for g in grads:
    (u_ours, s0), (u_plain, s1), (u_ref, s2) = (
      t.update(g, s) for t, s in zip((ours, plain, ref), states)
    )
    states = [s0, s1, s2]
    np.testing.assert_allclose(u_ours["w"], u_ref["w"], rtol=1e-5, atol=1e-6)
  assert int(states[0].count) == len(grads)
  # Uncorrected updates are larger early on: (1 - b1^t) / sqrt(1 - b2^t) > 1 at t = 6.
  ratio = np.abs(u_plain["w"]).mean() / np.abs(u_ours["w"]).mean()
  np.testing.assert_allclose(ratio, (1 - 0.9**6) / np.sqrt(1 - 0.999**6), rtol=0.05)
