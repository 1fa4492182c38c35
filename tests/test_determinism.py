"""Same config, same seed: identical metrics and weights twice, for every recipe (tiny runs, in process).

In process on purpose: a second run in the same interpreter starts from a different global RNG
state, so anything random that the seed does not govern (LoRA init, dropout, negatives, partner
selection, data order) shows up as a difference.
"""

import importlib
import json

import pytest
import torch
from helpers import TIMING, napo_config, sft_config
from safetensors.torch import load_file

RECIPES = {"napo.scripts.preference": napo_config, "napo.scripts.sft": sft_config}


def run_twice(module, make, inputs, tmp_path):
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        config = {**make(inputs, out), "max_steps": 4, "save_strategy": "no"}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))  # JSON is YAML
        torch.manual_seed(1000 + len(results))  # a different global RNG state before each run
        trainer = importlib.import_module(module).main(["--config", str(path)])
        history = [{k: v for k, v in h.items() if k not in TIMING} for h in trainer.state.log_history]
        results.append((history, load_file(out / "adapter_model.safetensors")))
    return results


@pytest.mark.parametrize("module", list(RECIPES))
def test_same_seed_same_run(napo_inputs, tmp_path, module):
    (ha, wa), (hb, wb) = run_twice(module, RECIPES[module], napo_inputs, tmp_path)
    losses = [h["loss"] for h in ha if "loss" in h]
    assert len(losses) == 4 and losses[0] != losses[-1]
    assert ha == hb
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
