"""Merge a LoRA adapter into its base model: one full model to serve, save and (optionally) push.

```bash
napo-export --adapter runs/ml-100k/napo --output_dir runs/ml-100k/napo-merged
napo-export --adapter me/napo-ml-100k --output_dir merged --push_to_hub true --hub_model_id me/napo-ml-100k-merged
```

The base named in the adapter's `adapter_config.json` (or `--base_model`) is loaded in full
precision (`dtype`, float32 by default), also when the adapter was trained on a 4-bit base
(QLoRA): merging into quantized weights would round the update away. Writes the merged model, the
tokenizer (the adapter's when saved beside it) and a model card carried over from the adapter's
(evaluations included: the merged model computes the same log-probs); `push_to_hub` uploads the
folder once.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.errors import UserError
from napo.models.loading import ADAPTER_CONFIG, ModelLoadError


@dataclass
class ExportArguments:
    """What to merge, where to write it, and where to push it."""

    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter: a local output_dir or a Hub id."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the merged model is written."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base model (Hub id or local dir); None: the adapter_config.json's base_model_name_or_path."},
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the base and the merged model: float32, bfloat16 or float16 (never 4-bit).",
                  "choices": ["float32", "bfloat16", "float16"]},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the merged model (one create_repo, one upload)."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo of the merged model (needed to push)."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the Hub repo as private."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the base repository's own code (off)."})

    def __post_init__(self):
        if not self.adapter or not self.output_dir:
            raise UserError("adapter and output_dir are required (in the config or as --adapter / --output_dir)")
        if self.push_to_hub and not self.hub_model_id:
            raise UserError("push_to_hub needs hub_model_id (e.g. --hub_model_id me/napo-merged)")


def main(argv=None):
    from napo.preflight import HUB_ERRORS, check_environment, hub_failure
    from napo.scripts.parser import ScriptParser, fail

    (args,) = ScriptParser((ExportArguments,), description=__doc__.split("\n\n")[0]).parse(argv)
    try:
        check_environment(args)  # push_to_hub: the Hub reachable and a token, before the merge
        out = export(args)
    except UserError as err:
        fail(err)
    print(f"Merged model saved to {out}")
    if args.push_to_hub:
        from napo.hub import push_folder

        try:
            push_folder(out, args.hub_model_id, private=args.hub_private_repo, commit_message="Merged LoRA adapter")
        except HUB_ERRORS as err:
            fail(hub_failure(err, str(out)))
        print(f"Merged model pushed to https://huggingface.co/{args.hub_model_id}")
    return 0


def export(args: ExportArguments) -> Path:
    """Merge ``args.adapter`` into its full-precision base and write it to ``args.output_dir``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from napo import hybrid
    from napo.cards import read_card, write_card
    from napo.hub import hub_id_of
    from napo.hybrid import tokens
    from napo.models.loading import load_tokenizer, resolve_adapter, restore_hybrid

    adapter = resolve_adapter(args.adapter)
    config = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text())
    base = args.base_model or config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{Path(adapter) / ADAPTER_CONFIG} names no base model: pass --base_model")
    try:  # full precision, no quantization_config: a QLoRA adapter is merged into the unquantized base
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, args.dtype),
                                                     trust_remote_code=args.trust_remote_code)
    except OSError as err:
        raise ModelLoadError(
            f"cannot reach the base model {base!r} of adapter {args.adapter!r}: {str(err).splitlines()[0]} "
            "(check network access, or pass --base_model with a local copy)"
        ) from err
    restore_hybrid(model, base, adapter)  # a hybrid projector saved by the adapter needs its module
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out = Path(args.output_dir)
    if tokens.is_parametrized(merged):
        tokens.materialize(merged)  # hybrid item tokens: the trained projection baked into the rows
    if hybrid.encoder_of(merged) is not None:  # LLaRA's placeholders: the encoder travels with the model
        merged.save_pretrained(out, state_dict=tokens.plain_state_dict(merged))
        hybrid.save(merged, out)
    else:
        merged.save_pretrained(out)
    tokenizer_dir = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
    load_tokenizer(tokenizer_dir, trust_remote_code=args.trust_remote_code).save_pretrained(out)

    record = read_card(adapter) or {"method": "sft", "adapter": None}
    trained_on = record.get("quantization")  # e.g. the 4-bit base of a QLoRA run
    record.update({
        "model_name": args.hub_model_id.split("/")[-1] if args.hub_model_id else out.name,
        "hub_model_id": args.hub_model_id,
        "merged": str(args.adapter),
        "quantization": None,
        "base_model": hub_id_of(base),
        "base_model_path": str(base),
    })
    if trained_on:
        record["merged"] += f" (trained on a {trained_on.split(' base')[0]} base)"
    write_card(out, record)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
