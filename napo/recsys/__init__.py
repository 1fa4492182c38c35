"""Id-based sequential recommenders (Pop, SASRec, GRU4Rec, Caser, DreamRec, PreferDiff), negative
samplers, one training loop, and the auxiliary outputs NAPO reads (user vectors, candidate scores).

Entry point: recipes/sasrec.py. Modules: data (id sequences), models, samplers, losses, train
(RecConfig, fit, infer, checkpoints), aux (write_aux / load_aux), diffusion (DreamRec and
PreferDiff as one conditional diffusion model, DiffusionRec) and diffusion_config (RecConfig ->
DiffusionRec).
"""
