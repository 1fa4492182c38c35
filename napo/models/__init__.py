"""Models and tokenizers.

- ``napo.models.tiny``: offline tiny Llama/Qwen2 model + BPE tokenizer built from a prepared
  dataset (``python -m napo.models.tiny``), optionally with one token per item.
- ``napo.models.loading``: ``load_model_and_tokenizer(model_args, training_args)``, the one way
  recipes load a Hub id, a local checkpoint or an SFT adapter directory.
- ``napo.models.sft_data``: prepared splits -> TRL prompt/completion data.
- ``napo.models.recipe_args``: ``DatasetArguments`` and strict ``--config`` YAML parsing.
- ``napo.models.synthetic``: a small synthetic prepared dataset for tests and smoke runs.

Nothing heavy is imported here: import the submodules.
"""
