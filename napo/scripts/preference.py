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
napo-recsys --config recipes/configs/ml-100k/sasrec.yaml \
    --dataset_dir runs/data/ml-100k --output_dir runs/ml-100k/sasrec      # NAPO's aux outputs
accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/napo.py \
    --config recipes/configs/ml-100k/napo.yaml

# offline tiny model on a CPU, about two minutes (after sft-tiny and sasrec-tiny)
accelerate launch recipes/napo.py --config recipes/configs/ml-100k/napo-tiny.yaml
```

Writes to `output_dir`: the trained adapter (a continued SFT adapter's frozen copy under `ref/`), the
tokenizer, `README.md` (our model card, `napo.cards`), `run.json` (config, versions, seed, git
revision) and the trainer's logs/checkpoints. `push_to_hub: true` uploads it once.
"""

import sys
from dataclasses import asdict, replace

from trl import ModelConfig, get_peft_config

from data_prep.errors import UserError
from napo import hybrid
from napo.cards import command_line, dataset_facts
from napo.checkpoints import claim_output_dir, clear_previous_run, resolve_resume
from napo.config import AdapterArguments, DatasetArguments, NAPOConfig
from napo.data import (
    check_item_tokens,
    check_objective_data,
    explain_missing_item_ids,
    load_training_data,
    preference_splits,
)
from napo.distributed import describe
from napo.guards import GuardArguments, attach_guards
from napo.hub import base_model_facts
from napo.models.loading import is_adapter_dir, load_model_and_tokenizer
from napo.preflight import HUB_ERRORS, check_environment, hub_failure
from napo.scripts.parser import ScriptParser, fail
from napo.trainer import NAPOTrainer
from napo.utils import write_run_info


def main(argv=None):
    # Parse: YAML (--config) + command line; unknown keys, bad values and invalid settings stop
    # with one line (sharing / margin asked on data that cannot have item ids: said so).
    parser = ScriptParser((DatasetArguments, AdapterArguments, NAPOConfig, ModelConfig, GuardArguments,
                           hybrid.HybridArguments))
    data_args, adapter_args, training_args, model_args, guard_args, hybrid_args = parser.parse(
        argv, explain=lambda err: explain_missing_item_ids(err, argv if argv is not None else sys.argv[1:]))

    # Environment, output_dir and data first (each fails before a model loads), then the model.
    # An SFT LoRA adapter stays trainable and DPOTrainer adds its frozen copy "ref" as the
    # reference; a fully fine-tuned SFT model becomes the base of a fresh LoRA (ModelConfig
    # flags), so the adapter-disabled policy is the SFT model.
    sft = adapter_args.sft_adapter or model_args.model_name_or_path
    try:
        check_environment(training_args, model_args)  # trackers, bitsandbytes, the Hub for push_to_hub
        resume = resolve_resume(training_args.output_dir, training_args.resume_from_checkpoint)
        previous = claim_output_dir(training_args.output_dir, overwrite=guard_args.overwrite_output_dir,
                                    resuming=resume is not None)
        dataset, items, meta = load_training_data(data_args)
        if data_args.train_split in dataset:  # sharing / margin / aux need item ids: refuse early
            check_objective_data(training_args, dataset[data_args.train_split], data_args.source)
        splits = preference_splits(dataset, meta, data_args, training_args.aux_dir,
                                   with_eval=training_args.eval_strategy != "no")
        model, tokenizer = load_model_and_tokenizer(replace(model_args, model_name_or_path=sft), training_args,
                                                    merge_adapter=False)
        base = base_model_facts(sft)  # the base model's Hub id (None for a local-only model)
        peft_config = None if is_adapter_dir(sft) else get_peft_config(model_args)
        check_item_tokens(tokenizer, meta, items)
        # Hybrid item embeddings: restored from the SFT output when it was saved with them (the
        # projector then trains on in the policy: modules_to_save), or built here (item_embeddings aux).
        encoder = hybrid.prepare(model, tokenizer, hybrid_args, meta=meta, items=items,
                                 aux_dir=hybrid_args.item_aux_dir or training_args.aux_dir, seed=training_args.seed)
        if encoder is not None and encoder.form == "placeholders":
            raise hybrid.HybridError("preference training of LLaRA placeholder models is not built (the listwise "
                                     "scorer does not place the projected vectors yet); evaluate the SFT model")
        peft_config = hybrid.peft_settings(peft_config, model, encoder)
        # Trainer: reads TRL's formats, checks num_negatives against the rows, and checks that the
        # distributed strategy running is the one the launch asked for.
        trainer = NAPOTrainer(
            model=model,
            args=training_args,
            train_dataset=splits["train"],
            eval_dataset=splits.get("eval"),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    except UserError as err:
        fail(err)
    except HUB_ERRORS as err:  # creating the Hub repo (push_to_hub)
        fail(hub_failure(err, training_args.output_dir))
    trainer.accelerator.print(f"Distributed strategy: {describe(trainer.strategy)}")
    rows = {k: len(v) for k, v in splits.items()}
    trainer.card_info = {**base, "command": command_line(argv, "napo-train"),
                         "dataset": dataset_facts(data_args.source, meta, rows)}
    attach_guards(trainer, guard_args.nonfinite, resume)  # NaN/inf stop or skip; checkpoints marked complete
    if trainer.accelerator.is_main_process:
        clear_previous_run(previous)  # overwrite_output_dir: the old run's files go before any new one is written
        config = {
            "dataset": asdict(data_args),
            "dataset_meta": {k: meta.get(k) for k in ("dataset", "item_format", "fingerprint", "num_candidates")},
            "adapter": asdict(adapter_args),
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
    trainer.save_model(training_args.output_dir)
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
