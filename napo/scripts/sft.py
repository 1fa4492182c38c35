"""Supervised fine-tuning of a causal LM on a prepared recommendation dataset (TRL SFTTrainer).

The model learns to answer each candidate-list prompt with the target title (or item token)
followed by EOS; the loss covers the completion tokens only. With `item_softmax: true` (item-token
data) the loss is instead the cross-entropy of the target item over the item-token rows of the LM
head at the answer position: SASRec's full-softmax objective. LoRA / QLoRA come from the
`ModelConfig` flags (`use_peft`, `lora_*`, `load_in_4bit`...), every hyperparameter from the YAML.

```bash
# paper setting (one GPU; see accelerate_configs/ for DDP, FSDP, DeepSpeed)
accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/sft.py \
    --config recipes/configs/ml-100k/sft.yaml

# offline tiny model on a CPU, a few minutes
python -m napo.models.tiny --dataset-dir runs/data/ml-100k-tokens --output-dir runs/tiny/ml-100k-tokens \
    --item-tokens --hidden-size 64 --num-layers 2
napo-sft --config recipes/configs/ml-100k/sft-tiny.yaml
```

Writes to `output_dir`: the adapter (or full model without LoRA), the tokenizer, `README.md` (our
model card, `napo.cards`), `run.json` (config, versions, seed, git revision) and the trainer's
logs/checkpoints. `push_to_hub: true` uploads it once.
"""

from dataclasses import asdict

from trl import ModelConfig, get_peft_config

from data_prep.errors import UserError
from napo import hybrid
from napo.cards import command_line, dataset_facts
from napo.checkpoints import claim_output_dir, clear_previous_run, resolve_resume
from napo.config import DatasetArguments, RecSFTConfig
from napo.data import TrainingDataError, check_item_tokens, load_training_data, to_prompt_completion
from napo.distributed import describe
from napo.guards import GuardArguments, attach_guards
from napo.hub import RecSFTTrainer, base_model_facts
from napo.hybrid import placeholders
from napo.models.loading import load_model_and_tokenizer, load_tokenizer
from napo.preflight import HUB_ERRORS, check_environment, hub_failure
from napo.scripts.parser import ScriptParser, fail
from napo.utils import write_run_info


def main(argv=None):
    # Parse: YAML (--config) + command line; unknown keys and bad values stop the run with file:line:column.
    parser = ScriptParser((DatasetArguments, RecSFTConfig, ModelConfig, GuardArguments, hybrid.HybridArguments))
    data_args, training_args, model_args, guard_args, hybrid_args = parser.parse(argv)

    # Environment, output_dir, data and tokenizer checked first, then the model (dtype, QLoRA
    # quantization, attention implementation, pad token): a missing package, another run in the
    # output_dir, a missing directory or a dataset/tokenizer mismatch ends the run with one line
    # before any weights are loaded.
    try:
        check_environment(training_args, model_args)  # trackers, bitsandbytes, the Hub for push_to_hub
        resume = resolve_resume(training_args.output_dir, training_args.resume_from_checkpoint)
        previous = claim_output_dir(training_args.output_dir, overwrite=guard_args.overwrite_output_dir,
                                    resuming=resume is not None)
        dataset, items, meta = load_training_data(data_args)
        tokenizer = load_tokenizer(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
        check_item_tokens(tokenizer, meta, items)
        # Prompt/completion pairs (or chat messages, which TRL renders with the chat template): TRL
        # appends EOS to the completion and masks the prompt out of the loss. Checked before any
        # weights load; LLaRA's placeholder form also needs each row's history and candidates.
        for split in [data_args.train_split] + ([data_args.eval_split] if training_args.eval_strategy != "no" else []):
            if split not in dataset:
                raise TrainingDataError(f"{data_args.source}: no split {split!r} (has {', '.join(dataset)})")
        item_columns = tuple(c for c in ("history", "candidates") if c in dataset[data_args.train_split].column_names)
        train_dataset = to_prompt_completion(dataset[data_args.train_split], data_args.max_train_samples, tokenizer,
                                             item_columns)
        eval_dataset = None
        if training_args.eval_strategy != "no":
            eval_dataset = to_prompt_completion(dataset[data_args.eval_split], data_args.max_eval_samples, tokenizer,
                                                item_columns)
        model, tokenizer = load_model_and_tokenizer(model_args, training_args)
        base = base_model_facts(model_args.model_name_or_path)  # the base's Hub id, recorded at load time
        # Hybrid item embeddings (item_embeddings: aux): the aux model's item vectors through a projector.
        encoder = hybrid.prepare(model, tokenizer, hybrid_args, meta=meta, items=items,
                                 aux_dir=hybrid_args.item_aux_dir, seed=training_args.seed)
        peft_config = hybrid.peft_settings(get_peft_config(model_args), model, encoder)  # + the projector
        llara = placeholders.uses_placeholders(model)
        keep = ("history", "candidates") if llara else ()
        if not llara and item_columns:  # text-only training: exactly TRL's columns
            train_dataset = train_dataset.remove_columns(list(item_columns))
            eval_dataset = eval_dataset.remove_columns(list(item_columns)) if eval_dataset is not None else None

        # Trainer (LoRA adapter from ModelConfig when use_peft is set); it checks that the
        # distributed strategy running is the one the launch asked for.
        trainer = RecSFTTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    except UserError as err:
        fail(err)
    except HUB_ERRORS as err:  # creating the Hub repo (push_to_hub)
        fail(hub_failure(err, training_args.output_dir))
    trainer.accelerator.print(f"Distributed strategy: {describe(trainer.strategy)}")
    if llara:  # LLaRA's curriculum: hybrid batches (placeholders -> projected aux vectors) or text-only
        trainer.extra_columns = keep
        trainer.data_collator = placeholders.CurriculumCollator(
            trainer.data_collator, placeholders.placeholder_ids(tokenizer), hybrid_args.hybrid_curriculum,
            seed=training_args.seed)
        trainer.add_callback(placeholders.curriculum_callback(trainer.data_collator))
    rows = {"train": len(train_dataset), **({"eval": len(eval_dataset)} if eval_dataset is not None else {})}
    trainer.card_info = {**base, "command": command_line(argv, "napo-sft"),
                         "dataset": dataset_facts(data_args.source, meta, rows)}
    attach_guards(trainer, guard_args.nonfinite, resume)  # NaN/inf stop or skip; checkpoints marked complete
    if trainer.accelerator.is_main_process:
        clear_previous_run(previous)  # overwrite_output_dir: the old run's files go before any new one is written
        config = {
            "dataset": asdict(data_args),
            "dataset_meta": {k: meta.get(k) for k in ("dataset", "item_format", "fingerprint", "num_candidates")},
            "training": training_args.to_dict(),
            "model": asdict(model_args),
            "guards": asdict(guard_args),
            "distributed": trainer.strategy,
            "hybrid": asdict(hybrid_args),
        }
        write_run_info(training_args.output_dir, config, seed=training_args.seed)

    # Train (from the resolved checkpoint: `true` = the last complete one), save, push.
    try:
        trainer.train(resume_from_checkpoint=resume)
    except UserError as err:  # the non-finite guard's one line
        fail(err)
    trainer.save_model(training_args.output_dir)  # also saves the tokenizer
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        try:
            trainer.push_to_hub(dataset_name=meta.get("dataset"))
        except HUB_ERRORS as err:
            fail(hub_failure(err, training_args.output_dir))
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}")
    trainer.end()
    return trainer


if __name__ == "__main__":
    main()
