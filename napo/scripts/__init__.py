"""The script bodies, each a ``main(argv=None)`` (as ``trl/scripts/`` keeps TRL's).

- ``sft``: supervised fine-tuning (``napo-sft``, ``recipes/sft.py``)
- ``preference``: DPO / S-DPO / NAPO (``napo-train``, ``recipes/napo.py``)
- ``recsys``: id-based recommenders: Pop, SASRec, GRU4Rec, Caser (``napo-recsys``, ``recipes/recsys.py``)
- ``evaluate``: LLM and classic recommenders through one metrics path (``napo-eval``, ``recipes/evaluate.py``)

Every script parses dataclasses with ``napo.scripts.parser.ScriptParser`` (YAML ``--config`` plus
command-line overrides, unknown keys reported with file:line:column) and turns a
``UserError`` into one ``error:`` line and exit status 2.
"""
