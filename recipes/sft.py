"""Supervised fine-tuning of a causal LM on a prepared recommendation dataset (TRL SFTTrainer).

The model learns to answer each candidate-list prompt with the target title (or item token)
followed by EOS; the loss covers the completion tokens only. LoRA / QLoRA come from the
`ModelConfig` flags (`use_peft`, `lora_*`, `load_in_4bit`...), every hyperparameter from the YAML.

```bash
# paper setting (one GPU; see accelerate_configs/ for DDP, FSDP, DeepSpeed)
accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/sft.py \
    --config recipes/configs/ml-100k/sft.yaml

# offline tiny model on a CPU, a few minutes
python -m napo.models.tiny --dataset-dir runs/data/ml-100k-tokens --output-dir runs/tiny/ml-100k-tokens \
    --item-tokens --hidden-size 64 --num-layers 2
python recipes/sft.py --config recipes/configs/ml-100k/sft-tiny.yaml
```

Writes to `output_dir`: the adapter (or full model without LoRA), the tokenizer, `run.json`
(config, versions, seed, git revision) and the trainer's logs/checkpoints.
"""

import sys
from dataclasses import asdict
from pathlib import Path

# recipes/napo.py sits beside this script and Python puts the script's folder first on the
# import path: drop it so that `import napo` finds the package, not that recipe.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config  # noqa: E402

from data_prep.prepared import PreparedDataError, load_prepared  # noqa: E402
from napo.models.loading import ModelLoadError, load_model_and_tokenizer, load_tokenizer  # noqa: E402
from napo.models.recipe_args import DatasetArguments, parse_recipe_args  # noqa: E402
from napo.models.sft_data import SFTDataError, check_item_tokens, to_prompt_completion  # noqa: E402
from napo.utils import write_run_info  # noqa: E402


def main(argv=None):
    # Parse: YAML (--config) + command line; unknown keys stop the run with file:line:column.
    parser = TrlParser((DatasetArguments, SFTConfig, ModelConfig))
    data_args, training_args, model_args = parse_recipe_args(parser, argv)
    if data_args.dataset_dir is None:
        parser.exit(2, "error: dataset_dir is not set: add `dataset_dir: DIR` to the config or pass --dataset_dir\n")

    # Data and tokenizer checked first, then the model (dtype, QLoRA quantization, attention
    # implementation, pad token): a missing directory or a dataset/tokenizer mismatch ends the
    # run with one line before any weights are loaded.
    try:
        dataset, items, meta = load_prepared(data_args.dataset_dir)
        tokenizer = load_tokenizer(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
        check_item_tokens(tokenizer, meta, items)
        model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    except (PreparedDataError, ModelLoadError, SFTDataError) as err:
        parser.exit(2, f"error: {err}\n")

    # Prompt/completion pairs: TRL appends EOS to the completion and masks the prompt out of the loss.
    train_dataset = to_prompt_completion(dataset[data_args.train_split], data_args.max_train_samples)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = to_prompt_completion(dataset[data_args.eval_split], data_args.max_eval_samples)

    # Trainer (LoRA adapter from ModelConfig when use_peft is set).
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    if trainer.accelerator.is_main_process:
        config = {
            "dataset": asdict(data_args),
            "dataset_meta": {k: meta.get(k) for k in ("dataset", "item_format", "fingerprint", "num_candidates")},
            "training": training_args.to_dict(),
            "model": asdict(model_args),
        }
        write_run_info(training_args.output_dir, config, seed=training_args.seed)

    # Train, save (adapter + tokenizer), push.
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)  # also saves the tokenizer
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=meta.get("dataset"))
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}")
    trainer.end()
    return trainer


if __name__ == "__main__":
    main()
