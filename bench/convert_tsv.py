"""Benchmarks TSV -> TFRecord conversion against merely reading and base64-decoding the TSV.

Generates synthetic LXMERT feature TSVs (36 boxes x 2048 float32 features per image, base64, as
the real ``*_obj36.tsv`` files) plus a VQA-style JSON with 3 questions per image, then for each
size measures:

  * read + b64decode: one process reads every line, splits it and base64-decodes all 6 arrays
    (the floor for any converter in Python);
  * convert: ``python -m tfrecords_tools.vqa`` end to end (parse, validate, tokenise, encode,
    write float16 shards), with its peak memory: PSS summed over the main process and its
    workers (shared pages counted once), sampled every 0.2 s, and the main process's VmHWM.

Example (about 10 minutes on 2 cores; needs ~8 GB of free disk in --workdir)::

  python bench/convert_tsv.py --sizes 2500 10000 --num_workers 0 2 --workdir /tmp/lxmert_bench_tsv

Prints a table and writes ``<workdir>/convert_tsv.json``. The TSVs are read from the page
cache (they were just written and fit in RAM), so disk speed is not measured.
"""

from __future__ import annotations

import argparse
import binascii
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import psutil

from tfrecords_tools import synthetic
from tfrecords_tools.tsv_features import READ_BUFFER, format_tsv_line

NUM_BOXES, FEAT_DIM = 36, 2048


def generate(workdir: str, num_images: int, seed: int = 0) -> dict:
  """Writes tsv/vqa json/answers/vocab for ``num_images`` (reused if already there)."""
  tag = f"n{num_images}"
  paths = {k: os.path.join(workdir, f"{tag}.{k}") for k in ("tsv", "json")}
  paths["answers"] = os.path.join(workdir, "ans2label.json")
  paths["vocab"] = os.path.join(workdir, "vocab.txt")
  synthetic.write_vocab(paths["vocab"])
  synthetic.write_json(paths["answers"], {a: i for i, a in enumerate(synthetic.ANSWERS)})
  rng = np.random.default_rng(seed)
  img_ids = [f"COCO_val2014_{i:012d}" for i in range(num_images)]
  if not os.path.exists(paths["tsv"]):
    tmp = paths["tsv"] + ".incomplete"
    # One random feature block per 64 images, shifted per image: generation stays I/O bound.
    block = rng.gamma(1.0, 1.0, (64, NUM_BOXES, FEAT_DIM)).astype(np.float32)
    with open(tmp, "wb") as f:
      for i, img_id in enumerate(img_ids):
        image = synthetic.make_image(rng, img_id, NUM_BOXES, 1)
        image["features"] = block[i % 64] + np.float32(i % 7)
        f.write(format_tsv_line(**image))
    os.replace(tmp, paths["tsv"])
  if not os.path.exists(paths["json"]):
    synthetic.write_json(paths["json"], synthetic.vqa_entries(rng, img_ids, per_image=3))
  return paths


def read_and_decode(path: str) -> tuple[float, int]:
  """Seconds to read every line and base64-decode its 6 arrays; returns (seconds, bytes)."""
  start, nbytes, images = time.perf_counter(), 0, 0
  with open(path, "rb", buffering=READ_BUFFER) as f:  # the converter's buffer size
    for line in f:
      fields = line.rstrip(b"\n").split(b"\t")
      for index, dtype in (
        (3, np.int64),
        (4, np.float32),
        (5, np.int64),
        (6, np.float32),
        (8, np.float32),
        (9, np.float32),
      ):
        np.frombuffer(binascii.a2b_base64(fields[index], strict_mode=True), dtype)
      nbytes += len(line)
      images += 1
  return time.perf_counter() - start, nbytes


def _memory(proc: psutil.Process) -> tuple[int, int]:
  """(PSS summed over proc and its children, VmHWM of proc) in bytes; 0 for vanished ones."""
  pss = 0
  for p in [proc, *proc.children(recursive=True)]:
    try:
      pss += p.memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      pass
  hwm = 0
  try:
    with open(f"/proc/{proc.pid}/status") as f:
      hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
  except (OSError, StopIteration):
    pass
  return pss, hwm


def convert(paths: dict, out_dir: str, num_workers: int) -> dict:
  cmd = [
    sys.executable,
    "-m",
    "tfrecords_tools.vqa",
    "--features",
    paths["tsv"],
    "--annotations",
    paths["json"],
    "--answers",
    paths["answers"],
    "--vocab",
    paths["vocab"],
    "--output_dir",
    out_dir,
    "--split",
    "train",
    "--num_workers",
    str(num_workers),
  ]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  ps = psutil.Process(proc.pid)
  peak_pss = peak_hwm = 0
  timeline = []  # (seconds, PSS): flat after start-up if memory does not grow with the input.
  while proc.poll() is None:
    pss, hwm = _memory(ps)
    peak_pss, peak_hwm = max(peak_pss, pss), max(peak_hwm, hwm)
    timeline.append((time.perf_counter() - start, pss))
    time.sleep(0.2)
  wall = time.perf_counter() - start
  quartiles = [
    max((p for t, p in timeline if t <= q * wall), default=0) / 1e6 for q in (0.25, 0.5, 0.75, 1.0)
  ]
  output = proc.stdout.read().decode()
  if proc.returncode:
    raise RuntimeError(f"conversion failed:\n{output}")
  with open(os.path.join(out_dir, "dataset_info.json")) as f:
    split = json.load(f)["splits"]["train"]
  return {
    "command": " ".join(cmd[1:]),
    "wall_seconds": round(wall, 2),
    "convert_seconds": split["seconds"],  # Excludes interpreter + TensorFlow import.
    "input_bytes": split["input_bytes"],
    "num_sentences": split["num_sentences"],
    "peak_pss_total_mb": round(peak_pss / 1e6, 1),
    "peak_rss_main_mb": round(peak_hwm / 1e6, 1),
    "pss_quartiles_mb": [round(q, 1) for q in quartiles],  # peak PSS up to 25/50/75/100% of wall
    "output_bytes": sum(
      os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir) if ".tfrecord-" in n
    ),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 10000], help="images per TSV")
  parser.add_argument("--workdir", default="/tmp/lxmert_bench_tsv")
  parser.add_argument(
    "--num_workers",
    type=int,
    nargs="+",
    default=[os.cpu_count()],
    help="worker counts to run the conversion with (0 = in the main process)",
  )
  parser.add_argument("--keep", action="store_true", help="keep the generated TSVs and shards")
  args = parser.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  rows = []
  for n in args.sizes:
    t = time.perf_counter()
    paths = generate(args.workdir, n)
    print(
      f"generated {n} images ({os.path.getsize(paths['tsv']) / 1e9:.2f} GB) in "
      f"{time.perf_counter() - t:.0f} s",
      flush=True,
    )
    load_before = os.getloadavg()[0]
    read_s, nbytes = read_and_decode(paths["tsv"])
    mb = nbytes / 1e6
    for workers in args.num_workers:
      out_dir = os.path.join(args.workdir, f"out_n{n}_w{workers}")
      result = convert(paths, out_dir, workers)
      # Other processes slow both measurements; the 1-min load average says how much.
      result["load_avg_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
      rows.append(
        {
          "num_images": n,
          "tsv_mb": round(mb, 1),
          "read_decode_seconds": round(read_s, 2),
          "read_decode_mb_s": round(mb / read_s, 1),
          "convert_mb_s": round(mb / result["convert_seconds"], 1),
          "convert_wall_mb_s": round(mb / result["wall_seconds"], 1),
          "num_workers": workers,
          **result,
        }
      )
      if not args.keep:
        for name in os.listdir(out_dir):
          os.remove(os.path.join(out_dir, name))
    if not args.keep:
      os.remove(paths["tsv"])
  cpu = next(
    (
      line.split(":", 1)[1].strip()
      for line in open("/proc/cpuinfo")
      if line.startswith("model name")
    ),
    platform.processor(),
  )
  machine = {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "memory_gb": round(psutil.virtual_memory().total / 2**30),
    "python": platform.python_version(),
  }
  header = (
    "images",
    "workers",
    "TSV MB",
    "read+b64 MB/s",
    "convert MB/s",
    "convert s",
    "wall s",
    "peak PSS MB",
    "peak RSS main MB",
    "PSS MB at 25/50/75/100%",
    "load avg",
  )
  print(f"\nmachine: {machine}\n| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for r in rows:
    values = (
      r["num_images"],
      r["num_workers"],
      r["tsv_mb"],
      r["read_decode_mb_s"],
      r["convert_mb_s"],
      r["convert_seconds"],
      r["wall_seconds"],
      r["peak_pss_total_mb"],
      r["peak_rss_main_mb"],
      "/".join(str(round(v)) for v in r["pss_quartiles_mb"]),
      "/".join(str(v) for v in r["load_avg_1min"]),
    )
    print("| " + " | ".join(str(v) for v in values) + " |")
  out = os.path.join(args.workdir, "convert_tsv.json")
  with open(out, "w") as f:
    json.dump({"machine": machine, "results": rows}, f, indent=2)
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
