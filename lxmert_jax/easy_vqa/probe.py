"""Linear probes: how much of a label a fixed feature vector exposes to a linear classifier.

Used to check that region features make the shape (not only the colour) learnable before any
LXMERT training: a multinomial logistic regression, full-batch, deterministic, numpy only.
"""

from __future__ import annotations

import numpy as np


def linear_probe(
  x_train: np.ndarray,
  y_train: np.ndarray,
  x_test: np.ndarray,
  y_test: np.ndarray,
  *,
  num_classes: int | None = None,
  steps: int = 500,
  learning_rate: float = 0.5,
  l2: float = 1e-4,
) -> float:
  """Test accuracy of softmax regression trained on (x_train, y_train).

  Args:
    x_train: [n_train, dim] features; x_test: [n_test, dim].
    y_train: [n_train] int labels; y_test: [n_test].
    num_classes: defaults to max label + 1.
    steps: full-batch gradient steps (Nesterov momentum 0.9).
    learning_rate: step size on standardised inputs.
    l2: weight decay on the weights (not the bias).

  Returns:
    Accuracy in [0, 1] on the test set.
  """
  x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
  y_train, y_test = np.asarray(y_train), np.asarray(y_test)
  k = num_classes or int(max(y_train.max(), y_test.max())) + 1
  # Standardise on the training set so one step size fits every probe.
  mean, std = x_train.mean(0), x_train.std(0) + 1e-6
  xt, xe = (x_train - mean) / std, (x_test - mean) / std
  xt, xe = np.c_[xt, np.ones(len(xt))], np.c_[xe, np.ones(len(xe))]
  onehot = np.eye(k)[y_train]
  w = np.zeros((xt.shape[1], k))
  velocity = np.zeros_like(w)
  decay = np.ones((xt.shape[1], 1))
  decay[-1] = 0.0
  for _ in range(steps):
    ahead = w + 0.9 * velocity
    logits = xt @ ahead
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = xt.T @ (p - onehot) / len(xt) + l2 * decay * ahead
    velocity = 0.9 * velocity - learning_rate * grad
    w = w + velocity
  return float(((xe @ w).argmax(1) == y_test).mean())
