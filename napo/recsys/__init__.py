"""Id-based sequential recommenders (Pop, SASRec, GRU4Rec, Caser), negative samplers, one
training loop, and the auxiliary outputs NAPO reads (user vectors, candidate scores).

Entry point: recipes/sasrec.py. Modules: data (id sequences), models, samplers, losses, train
(RecConfig, fit, infer, checkpoints), aux (write_aux / load_aux).
"""
