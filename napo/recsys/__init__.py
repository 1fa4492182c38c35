"""Recommenders without an LLM: Pop, SASRec, GRU4Rec, Caser, and the diffusion generators
DreamRec / PreferDiff (``diffusion``), negative samplers and one training loop. Entry point:
``napo-recsys`` (``napo/scripts/recsys.py``). Modules: data (id sequences), models, samplers,
losses, diffusion (+ diffusion_config), train (RecConfig, fit, infer, checkpoints). The outputs
NAPO reads (user vectors, candidate scores, item vectors) follow ``napo/auxiliary.py``.
"""
