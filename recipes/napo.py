"""Preference fine-tuning of an LLM recommender: DPO, S-DPO or NAPO (`loss_type` in the YAML).

Starts from the SFT stage's output (`sft_adapter`) and trains on listwise preferences (the
target against K of the 19 other candidates):
- an SFT LoRA adapter is trained further; the reference of DPO / S-DPO is a frozen copy of it
  (TRL's "ref" adapter), never a second model in memory;
- a fully fine-tuned SFT model gets a fresh LoRA (the `use_peft`/`lora_*` flags); the reference is
  then the adapter-disabled policy, i.e. the SFT model.
NAPO is reference-free and reads the auxiliary recommender's outputs (`aux_dir`) for in-batch
negative sharing and its dynamic margin.

```bash
# paper settings (see accelerate_configs/ for DDP, FSDP, DeepSpeed)
python recipes/sasrec.py --config recipes/configs/ml-100k/sasrec.yaml \
    --dataset_dir runs/data/ml-100k --output_dir runs/ml-100k/sasrec      # NAPO's aux outputs
accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/napo.py \
    --config recipes/configs/ml-100k/napo.yaml

# offline tiny model on a CPU, about two minutes (after sft-tiny and sasrec-tiny)
accelerate launch recipes/napo.py --config recipes/configs/ml-100k/napo-tiny.yaml
```

Writes to `output_dir`: the trained adapter (a continued SFT adapter's frozen copy under `ref/`), the
tokenizer, `run.json` (config, versions, seed, git revision) and the trainer's logs/checkpoints.
"""

import importlib
import sys
from dataclasses import asdict, replace
from pathlib import Path

# Any script run from recipes/ (this one, sft.py, sasrec.py...) has recipes/ first on sys.path,
# where this file shadows the `napo` package. Take that entry out; and when this file was
# imported *as* `napo` by a sibling script, put the real package in its place (the import system
# returns whatever sys.modules holds once the module has run).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if __name__ == "napo":
    del sys.modules["napo"]
    sys.modules["napo"] = importlib.import_module("napo")

from trl import ModelConfig, TrlParser, get_peft_config  # noqa: E402

from data_prep.prepared import PreparedDataError, load_prepared  # noqa: E402
from napo.collator import add_aux_columns  # noqa: E402
from napo.config import AdapterArguments, NAPOConfig  # noqa: E402
from napo.models.loading import ModelLoadError, is_adapter_dir, load_model_and_tokenizer  # noqa: E402
from napo.models.recipe_args import DatasetArguments, parse_recipe_args  # noqa: E402
from napo.models.sft_data import SFTDataError, check_item_tokens  # noqa: E402
from napo.recsys.aux import AuxError, load_aux  # noqa: E402
from napo.trainer import NAPOTrainer  # noqa: E402
from napo.utils import write_run_info  # noqa: E402


def main(argv=None):
    # Parse: YAML (--config) + command line; unknown keys and invalid settings stop with one line.
    parser = TrlParser((DatasetArguments, AdapterArguments, NAPOConfig, ModelConfig))
    data_args, adapter_args, training_args, model_args = parse_recipe_args(parser, argv)
    if data_args.dataset_dir is None:
        parser.exit(2, "error: dataset_dir is not set: add `dataset_dir: DIR` to the config or pass --dataset_dir\n")

    # Model. An SFT LoRA adapter stays trainable and DPOTrainer adds its frozen copy "ref" as the
    # reference; a fully fine-tuned SFT model becomes the base of a fresh LoRA (ModelConfig flags),
    # so the adapter-disabled policy is the SFT model.
    sft = adapter_args.sft_adapter or model_args.model_name_or_path
    load_args = replace(model_args, model_name_or_path=sft)
    try:
        dataset, items, meta = load_prepared(data_args.dataset_dir)  # first: fail before loading a model
        model, tokenizer = load_model_and_tokenizer(load_args, training_args, merge_adapter=False)
        peft_config = None if is_adapter_dir(sft) else get_peft_config(model_args)

        # Data: prepared splits, plus the auxiliary recommender's user vectors and scores (joined
        # by row index, so before any truncation).
        check_item_tokens(tokenizer, meta, items)
        splits = {"train": data_args.train_split}
        if training_args.eval_strategy != "no":
            splits["eval"] = data_args.eval_split
        prepared = {}
        for role, split in splits.items():
            rows = dataset[split]
            if training_args.aux_dir:
                rows = add_aux_columns(rows, *load_aux(training_args.aux_dir, split, meta, num_rows=len(rows)))
            limit = data_args.max_train_samples if role == "train" else data_args.max_eval_samples
            prepared[role] = rows.select(range(min(limit, len(rows)))) if limit is not None else rows
    except (ModelLoadError, PreparedDataError, AuxError, SFTDataError) as err:
        parser.exit(2, f"error: {err}\n")

    # Trainer
    trainer = NAPOTrainer(
        model=model,
        args=training_args,
        train_dataset=prepared["train"],
        eval_dataset=prepared.get("eval"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if trainer.accelerator.is_main_process:
        config = {
            "dataset": asdict(data_args),
            "dataset_meta": {k: meta.get(k) for k in ("dataset", "item_format", "fingerprint", "num_candidates")},
            "adapter": asdict(adapter_args),
            "training": training_args.to_dict(),
            "model": asdict(model_args),
        }
        write_run_info(training_args.output_dir, config, seed=training_args.seed)

    # Train, save (adapter + tokenizer), push.
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=meta.get("dataset"))
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}")
    trainer.end()
    return trainer


if __name__ == "__main__":
    main()
