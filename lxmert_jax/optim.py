"""BertAdam (``src/lxrt/optimization.py`` of the original) as an optax chain (spec section 2.6).

G13: standard AdamW does not reproduce LXMERT's trajectories. BertAdam differs in four ways,
all kept here:

* no bias correction of the moments;
* eps (1e-6) added to sqrt(v), outside the square root;
* decoupled weight decay 0.01 added to the update for EVERY parameter (biases, LayerNorm and
  embeddings included; zero-gradient rows still decay);
* the ``warmup_linear`` schedule evaluated at x = updates_already_applied / t_total, so the
  very first update uses learning rate 0.

Gradient clipping by global norm (1.0 pretraining, 5.0 fine-tuning) happens before the
optimiser, as ``nn.utils.clip_grad_norm_`` does in the original training loops.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def warmup_linear(x: jax.Array, warmup: float) -> jax.Array:
  """LXMERT's ``warmup_linear``: x / w for x < w, else max((x - 1) / (w - 1), 0).

  Linear warm-up from 0 to 1 at x = w, then linear decay to 0 at x = 1 (and 0 after).
  """
  if not 0.0 <= warmup < 1.0:
    raise ValueError(f"warmup fraction must lie in [0, 1), got {warmup}")
  x = jnp.asarray(x, jnp.float32)
  rise = x / max(warmup, 1e-12)
  decay = jnp.maximum((x - 1.0) / (warmup - 1.0), 0.0)
  return jnp.where(x < warmup, rise, decay)


def warmup_linear_schedule(
  learning_rate: float, total_steps: int, warmup_fraction: float
) -> optax.Schedule:
  """optax schedule: count (updates already applied) -> lr * warmup_linear(count / total, w).

  Args:
    learning_rate: peak learning rate.
    total_steps: t_total = batches per epoch * epochs (in optimiser updates).
    warmup_fraction: w (0.05 pretraining, 0.1 fine-tuning).
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  warmup_linear(0.0, warmup_fraction)  # validates warmup_fraction eagerly

  def schedule(count):
    # warmup_linear(count / total) rewritten on counts: x - 1 near x = 1 would lose ~1e-5 of
    # relative precision in float32, while total - count is exact.
    count = jnp.asarray(count, jnp.float32)
    rise = count / (total_steps * max(warmup_fraction, 1e-12))
    decay = jnp.maximum((total_steps - count) / (total_steps * (1.0 - warmup_fraction)), 0.0)
    return learning_rate * jnp.where(count < warmup_fraction * total_steps, rise, decay)

  return schedule


class BertAdamState(NamedTuple):
  """First and second moments, same tree as the params, and the number of updates so far."""

  mu: optax.Updates
  nu: optax.Updates
  count: jax.Array


def scale_by_bert_adam(
  b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, bias_correction: bool = False
):
  """Adam direction m / (sqrt(v) + eps), by default WITHOUT bias correction (BertAdam).

  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  update = m / (sqrt(v) + eps).

  Without correction the first updates are up to (1 - b1) / sqrt(1 - b2) ~ 3.2x larger than
  Adam's (still 1.6x at update 500): harmless at BERT's 1e-4, but it makes peak rates near
  1e-3 (small models trained from scratch) diverge. ``bias_correction=True`` divides m and v
  by (1 - b^t) as in Adam/AdamW: update = m_hat / (sqrt(v_hat) + eps), t = updates so far.
  """

  def init_fn(params):
    def zeros(p):
      return jnp.zeros_like(p, dtype=jnp.float32)

    return BertAdamState(
      mu=jax.tree.map(zeros, params),
      nu=jax.tree.map(zeros, params),
      count=jnp.zeros([], jnp.int32),
    )

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, updates)
    count = state.count + 1
    if bias_correction:
      t = count.astype(jnp.float32)
      c1, c2 = 1.0 - b1**t, 1.0 - b2**t
      direction = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
    else:
      direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return direction, BertAdamState(mu=mu, nu=nu, count=count)

  return optax.GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(max_norm: float, eps: float = 1e-6) -> optax.GradientTransformation:
  """PyTorch ``clip_grad_norm_``: scale by max_norm / (norm + 1e-6) when that is below 1.

  optax's own version divides by the bare norm; the 1e-6 only matters at the 1e-6 relative
  level but keeps trajectories comparable with the original.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    norm = optax.global_norm(updates)
    scale = jnp.minimum(max_norm / (norm + eps), 1.0)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def bert_adam(
  learning_rate: float,
  total_steps: int,
  warmup_fraction: float,
  weight_decay: float = 0.01,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-6,
  max_grad_norm: float | None = 1.0,
  accumulation_steps: int = 1,
  bias_correction: bool = False,
) -> optax.GradientTransformation:
  """BertAdam with global-norm clipping in front (spec section 2.6, G13).

  Per step and parameter: g <- clip(g); m, v as in :func:`scale_by_bert_adam`;
  u = m / (sqrt(v) + eps) + weight_decay * theta; theta <- theta - lr_t * u with
  lr_t = :func:`warmup_linear_schedule` at the number of updates already applied.

  Args:
    learning_rate: peak lr (1e-4 pretraining; 5e-5 VQA/NLVR2, 1e-5 GQA).
    total_steps: t_total in optimiser updates (micro-batches / accumulation_steps).
    warmup_fraction: 0.05 pretraining, 0.1 fine-tuning.
    weight_decay: decoupled decay applied to every leaf.
    b1, b2, eps: Adam constants.
    max_grad_norm: global-norm clip (1.0 pretraining, 5.0 fine-tuning); None disables it.
    accumulation_steps: k > 1 wraps the chain in ``optax.MultiSteps``: gradients of k
      consecutive calls are averaged and one BertAdam update (clip included, on the averaged
      gradient) is applied on the k-th call; the other calls return zero updates. The schedule
      counts real updates, so ``total_steps`` stays in updates. Equals training with a k times
      larger batch when each micro-batch loss is a mean over the same number of examples.
    bias_correction: Adam's moment bias correction (off in BertAdam; see
      :func:`scale_by_bert_adam`).

  Returns:
    An optax ``GradientTransformation``.
  """
  parts = []
  if max_grad_norm is not None and max_grad_norm > 0:
    parts.append(clip_by_global_norm(max_grad_norm))
  parts.append(scale_by_bert_adam(b1=b1, b2=b2, eps=eps, bias_correction=bias_correction))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(
    optax.scale_by_learning_rate(
      warmup_linear_schedule(learning_rate, total_steps, warmup_fraction)
    )
  )
  chain = optax.chain(*parts)
  if accumulation_steps < 1:
    raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
  if accumulation_steps > 1:
    return optax.MultiSteps(chain, every_k_schedule=accumulation_steps).gradient_transformation()
  return chain
