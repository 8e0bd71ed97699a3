"""Installs lxmert_jax. Pinned versions live in constraints.txt: pip install -c constraints.txt ."""

from setuptools import find_packages, setup

RUNTIME = [
  "jax>=0.10.2",
  "flax>=0.12.8",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12.8",
  "tensorflow-cpu>=2.21.0",
  "tensorflow-datasets>=4.9.10",
  "ml-collections>=1.1.0",
  "absl-py",
  "clu",
  "tensorboard",
  "tokenizers",
  "numpy",
  "safetensors",
  "pillow",
  "matplotlib",
  "easy-vqa",
  # Progress bars of notebooks/finetune.ipynb.
  "tqdm",
]

setup(
  name="lxmert-jax",
  version="0.1.0",
  description="LXMERT (Tan & Bansal, EMNLP 2019) in JAX/Flax: pretraining, fine-tuning, inference.",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  license="Apache-2.0",
  python_requires=">=3.10",
  packages=find_packages(include=["lxmert_jax", "lxmert_jax.*", "tfrecords_tools", "configs"]),
  install_requires=RUNTIME,
  extras_require={
    # The PyTorch reference used by the parity tests and benchmarks (CPU build).
    "test": [
      "pytest",
      "pytest-xdist",
      "psutil",
      "torch==2.13.0",
      "transformers",
      "nbclient",
      "nbformat",
      "ipykernel",
      "ruff",
    ],
    "tpu": ["jax[tpu]>=0.10.2"],
    "gpu": ["jax[cuda12]>=0.10.2"],
  },
  entry_points={
    "console_scripts": [
      "lxmert-jax=lxmert_jax.main:run",
      "lxmert-jax-demo=lxmert_jax.demo:run",
      "lxmert-jax-predict=lxmert_jax.predict:run",
    ]
  },
)
