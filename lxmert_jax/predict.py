"""Answer a question about an easy-VQA-style image with a trained model (console: lxmert-jax-predict).

Usage (after the demo has trained ``workdir/easy_vqa``):

  python -m lxmert_jax.predict --workdir=workdir/easy_vqa --image=shape.png \\
      --question="what color is the shape?" --top_k=5 --attention_png=attention.png

The image goes through the same pixel detector and feature scaling as the training data
(``lxmert_jax.easy_vqa.features``), then through ``lxmert_jax.inference.Predictor``. Prints the
top-k answers with their probabilities (per-answer sigmoid: the head is trained with binary
cross-entropy); ``--attention_png`` also saves the cross-attention picture
(``lxmert_jax.viz.plot_prediction``).
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="lxmert-jax-predict",
    description="Answer a question about an image with a model trained by lxmert_jax.main.",
  )
  parser.add_argument("--workdir", required=True, help="training workdir (holds checkpoints/)")
  parser.add_argument("--image", required=True, help="image file (PNG/JPEG), easy-VQA style")
  parser.add_argument("--question", required=True, help='e.g. "what color is the shape?"')
  parser.add_argument("--top_k", type=int, default=5, help="answers to print (default 5)")
  parser.add_argument(
    "--attention_png", default=None, help="also save the attention figure to this PNG"
  )
  parser.add_argument(
    "--token",
    default="[CLS]",
    help="token whose attention over the boxes is drawn (default [CLS], which feeds the answer)",
  )
  args = parser.parse_args(argv)
  if args.top_k < 1:
    parser.error(f"--top_k must be >= 1, got {args.top_k}")
  return args


def main(argv=None) -> int:
  """Runs the CLI; returns the exit status."""
  args = parse_args(argv)
  if not os.path.isfile(args.image):
    print(f"error: image {args.image} not found", file=sys.stderr)
    return 2
  # Imported late so --help and argument errors are instant.
  from lxmert_jax import viz
  from lxmert_jax.easy_vqa.features import load_image
  from lxmert_jax.inference import Predictor

  try:
    predictor = Predictor.from_workdir(args.workdir, batch_buckets=(1,))
    image = load_image(args.image)
    feats, boxes = predictor.image_features(image)
    pred = predictor.predict(
      args.question, feats, boxes, top_k=args.top_k, output_attentions=bool(args.attention_png)
    )
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"Q: {pred.question}")
  width = max(len(a.text) for a in pred.top)
  for rank, answer in enumerate(pred.top, 1):
    print(f"{rank}. {answer.text:<{width}}  p={answer.prob:.4f}  (logit {answer.logit:+.3f})")
  if args.attention_png:
    try:
      fig = viz.plot_prediction(pred, image, token=args.token)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    print(f"attention figure: {viz.save(fig, args.attention_png)}")
  return 0


def run() -> None:
  """Console-script entry point (``lxmert-jax-predict``)."""
  sys.exit(main())


if __name__ == "__main__":
  run()
