"""Does a launch config really run the strategy it names? Prints one line per config.

For each accelerate config given, a tiny S-DPO run (synthetic item-token data, a random-init tiny
Llama, LoRA, 4 steps, fp32) is launched with ``accelerate launch --config_file CONFIG`` and the
strategy it recorded in ``run.json`` (``napo.distributed.running``) is compared with what the
config asks; its losses are compared with a single-process run of the same settings (same global
batch: per-device batch x processes). A mismatch of strategy is printed as FAIL (the run itself
stops with one line in that case); losses are printed with their largest difference.

    python bench/distributed_check.py accelerate_configs/fsdp.yaml accelerate_configs/ddp.yaml \\
        --num_processes 2 --output-dir bench_out/distributed

On a CPU-only machine FSDP / DeepSpeed configs are expected to FAIL (accelerate runs them as DDP
there); tests/test_fsdp_cpu.py shows torch's FSDP2 itself on two CPU processes. Used by
bench/gpu_check.sh on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def inputs(root: Path) -> tuple[Path, Path]:
    from data_prep.prepared import load_prepared
    from data_prep.synthetic import synthetic_prepared
    from napo.models.tiny import build_tiny_from_data

    data = root / "data"
    if not data.exists():
        synthetic_prepared(data, num_items=40, rows=(64, 8, 8), num_candidates=8, item_format="token", seed=0)
    model = root / "model"
    if not model.exists():
        dataset, items, _ = load_prepared(data)
        build_tiny_from_data(dataset, items, model, hidden_size=64, num_layers=2, num_heads=2, vocab_size=300,
                             item_tokens=True, seed=0)
    return data, model


def expected(config: dict) -> dict:
    kind = config.get("distributed_type")
    if kind == "FSDP":
        return {"strategy": "FSDP", "fsdp_version": int((config.get("fsdp_config") or {}).get("fsdp_version", 1))}
    if kind == "DEEPSPEED":
        return {"strategy": "DeepSpeed", "zero_stage": int((config.get("deepspeed_config") or {}).get("zero_stage"))}
    return {"strategy": "single process" if kind == "NO" else "DDP"}


def run(root: Path, name: str, data: Path, model: Path, batch: int, launch: list[str] | None) -> dict:
    out = root / name
    settings = dict(dataset_dir=str(data), model_name_or_path=str(model), output_dir=str(out), use_peft=True,
                    lora_r=8, lora_alpha=16, lora_target_modules=["q_proj", "v_proj"], loss_type="sdpo",
                    num_negatives=3, per_device_train_batch_size=batch, max_steps=4, learning_rate=1e-2,
                    logging_steps=1, report_to="none", gradient_checkpointing=False, save_strategy="no",
                    eval_strategy="no", bf16=False, seed=0, disable_tqdm=True, overwrite_output_dir=True)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    script = [str(REPO / "recipes" / "napo.py"), "--config", str(path)]
    cmd = [*launch, *script] if launch else [sys.executable, *script]
    path_env = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path_env}
    if launch and not torch.cuda.is_available():
        env.setdefault("ACCELERATE_USE_CPU", "true")  # without it accelerate's CPU workers each run alone
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if proc.returncode != 0:
        return {"ok": False, "error": errors[0] if errors else proc.stderr.strip().splitlines()[-1:]}
    record = json.loads((out / "run.json").read_text())
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {"ok": True, "distributed": record["config"]["distributed"],
            "losses": [h["loss"] for h in history if "loss" in h]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="accelerate config files")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="per-device batch of the launched runs")
    parser.add_argument("--output-dir", default="bench_out/distributed")
    args = parser.parse_args(argv)
    root = Path(args.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data, model = inputs(root)
    alone = run(root, "single", data, model, args.batch * args.num_processes, None)
    print(f"single process: {alone.get('distributed', {}).get('strategy')} losses {alone.get('losses')}")
    results = {"single": alone}
    failed = 0
    for config_file in args.configs:
        config = yaml.safe_load(Path(config_file).read_text())
        want = expected(config)
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                  "--num_processes", str(args.num_processes), "--mixed_precision", "no"]
        got = run(root, Path(config_file).stem, data, model, args.batch, launch)
        results[config_file] = got
        if not got["ok"]:
            failed += 1
            print(f"FAIL {config_file}: asked {want}; the run stopped: {got['error']}")
            continue
        ran = got["distributed"]
        same = all(ran.get(k) == v for k, v in want.items()) and ran["world_size"] == args.num_processes
        diff = max(abs(a - b) for a, b in zip(got["losses"], alone["losses"], strict=True))
        failed += not same
        print(f"{'OK  ' if same else 'FAIL'} {config_file}: asked {want}, ran {ran}; "
              f"losses {got['losses']}, max |diff| vs single process {diff:.2e}")
    (root / "results.json").write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
