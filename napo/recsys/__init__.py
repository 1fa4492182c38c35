"""Id-based sequential recommenders (Pop, SASRec, GRU4Rec, Caser), negative samplers and one
training loop. Entry point: ``napo-recsys`` (``napo/scripts/recsys.py``). Modules: data (id
sequences), models, samplers, losses, train (RecConfig, fit, infer, checkpoints). The outputs NAPO
reads (user vectors, candidate scores) follow ``napo/auxiliary.py``.
"""
