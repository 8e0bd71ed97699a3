"""Weight conversion between PyTorch LXMERT checkpoints (transformers / original) and Flax params.

``param_map`` holds the name table, ``from_pytorch`` reads and converts state dicts (also a CLI:
``python -m lxmert_jax.convert.from_pytorch``), ``to_hf`` writes transformers directories.
Submodules are not imported here so that ``python -m`` runs them without a double import.
"""
