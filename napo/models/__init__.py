"""Models and their loading, nothing else.

- ``napo.models.tiny``: offline tiny Llama/Qwen2 model + BPE tokenizer built from a prepared
  dataset (``python -m napo.models.tiny``), optionally with one token per item.
- ``napo.models.loading``: ``load_model_and_tokenizer(model_args, training_args)``, the one way
  scripts load a Hub id, a local checkpoint or an SFT adapter directory; ``load_for_evaluation``.

Nothing heavy is imported here: import the submodules.
"""
