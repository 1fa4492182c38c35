"""Which distributed strategy a launch asked for, which one really runs, and a stop when they differ.

``accelerate launch --config_file accelerate_configs/X.yaml`` passes the config to each worker as
environment variables (``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``FSDP_RESHARD_AFTER_FORWARD``,
``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, torchrun's ``WORLD_SIZE``); the
worker's ``Accelerator`` then decides what runs. The two can differ without a word from accelerate
(1.16, measured on this project's CPU machine, issue 21):

- FSDP or DeepSpeed asked on CPU processes (``use_cpu``): accelerate's state selects FSDP only for
  accelerator devices and DeepSpeed only without ``cpu``, so the run is plain DDP over gloo
  (``MULTI_CPU``), with losses identical to the DDP run;
- a multi-process launch whose workers find no device and are not told ``use_cpu``: each worker
  is a single process of its own (``WORLD_SIZE`` 2, ``num_processes`` 1) and they all write the
  same output_dir.

:func:`running` describes what runs (for run.json, the log's first line and the model card);
:func:`check_strategy` raises a one-line :class:`StrategyError` when it is not what was asked.
(``torch.distributed.fsdp.fully_shard`` itself runs on gloo: tests/test_fsdp_cpu.py trains with it
on two CPU processes; it is accelerate's selection, not FSDP2, that is GPU-only.)
"""

from __future__ import annotations

import os
from typing import Any

from data_prep.errors import UserError


class StrategyError(UserError):
    """The launch asked for one distributed strategy and the processes run another."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def asked() -> dict[str, Any]:
    """The strategy the launcher's environment asks for: {"strategy", "world_size", ...}."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if _flag("ACCELERATE_USE_FSDP"):
        return {"strategy": "FSDP", "fsdp_version": int(os.environ.get("FSDP_VERSION", "1") or 1), "world_size": world}
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return {"strategy": "DeepSpeed", "zero_stage": int(stage) if stage else None, "world_size": world}
    return {"strategy": "DDP" if world > 1 else "single process", "world_size": world}


def _fsdp_sharding(plugin: Any) -> str:
    """FSDP's sharding in torch's words: FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD..."""
    value = plugin.reshard_after_forward if getattr(plugin, "fsdp_version", 1) == 2 else plugin.sharding_strategy
    if isinstance(value, bool):  # FSDP2: resharding after forward = ZeRO-3-like FULL_SHARD
        return "FULL_SHARD" if value else "SHARD_GRAD_OP"
    return getattr(value, "name", str(value))


def running(accelerator: Any) -> dict[str, Any]:
    """What this process group really runs: strategy, world size, device, backend and the
    strategy's own settings (FSDP version and sharding, DeepSpeed ZeRO stage and offload)."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    kind = accelerator.distributed_type
    info: dict[str, Any] = {"world_size": accelerator.num_processes, "device": accelerator.device.type,
                            "backend": getattr(state, "backend", None), "mixed_precision": accelerator.mixed_precision}
    if kind == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        info.update(strategy="FSDP", fsdp_version=getattr(plugin, "fsdp_version", 1), sharding=_fsdp_sharding(plugin),
                    cpu_offload=bool(getattr(getattr(plugin, "cpu_offload", None), "offload_params", False)))
    elif kind == DistributedType.DEEPSPEED:
        plugin = state.deepspeed_plugin
        info.update(strategy="DeepSpeed", zero_stage=plugin.zero_stage,
                    offload_optimizer=getattr(plugin, "offload_optimizer_device", None),
                    offload_param=getattr(plugin, "offload_param_device", None))
    elif kind == DistributedType.NO:
        info.update(strategy="single process")
    else:  # MULTI_GPU, MULTI_CPU, MULTI_XPU, ...: torch DDP
        info.update(strategy="DDP")
    info["distributed_type"] = kind.value
    return info


def describe(info: dict[str, Any]) -> str:
    """One line: 'FSDP2 (FULL_SHARD) on 2 processes (cpu, gloo)', 'DeepSpeed ZeRO-3 on 8 processes (cuda, nccl)',
    'single process (cpu)'."""
    name = info["strategy"]
    if name == "FSDP":
        name = f"FSDP{info.get('fsdp_version', 1)} ({info.get('sharding')}" + (", params offloaded" if info.get("cpu_offload") else "") + ")"
    elif name == "DeepSpeed":
        name = f"DeepSpeed ZeRO-{info.get('zero_stage')}"
    where = ", ".join(str(v) for v in (info.get("device"), info.get("backend")) if v)
    if name == "single process":
        return f"single process ({where})" if where else name
    count = info["world_size"]
    return f"{name} on {count} process{'es' if count != 1 else ''}" + (f" ({where})" if where else "")


def check_strategy(accelerator: Any) -> dict[str, Any]:
    """``running(accelerator)``, or :class:`StrategyError` when it is not what the launch asked for."""
    want, got = asked(), running(accelerator)
    if want["world_size"] != got["world_size"]:
        raise StrategyError(
            f"the launch started {want['world_size']} processes but each runs alone ({describe(got)}): they would "
            "train independently and overwrite one output_dir; on CPU launch with ACCELERATE_USE_CPU=true in the "
            "environment (the config file's use_cpu alone does not reach the workers), see accelerate_configs/cpu_2proc.yaml"
        )
    if want["strategy"] in ("FSDP", "DeepSpeed") and want["strategy"] != got["strategy"]:
        cpu = " (accelerate runs FSDP and DeepSpeed on accelerator devices only; on CPU they fall back to DDP)" \
            if got["device"] == "cpu" else ""
        raise StrategyError(
            f"the launch asked for {want['strategy']} but the processes run {describe(got)}{cpu}: launch on GPUs, or "
            "use accelerate_configs/cpu_2proc.yaml (DDP) on CPU"
        )
    if want["strategy"] == "FSDP" and got.get("fsdp_version") != want["fsdp_version"]:
        raise StrategyError(f"the launch asked for FSDP{want['fsdp_version']} but the processes run {describe(got)}")
    if want["strategy"] == "DeepSpeed" and want.get("zero_stage") not in (None, got.get("zero_stage")):
        raise StrategyError(f"the launch asked for DeepSpeed ZeRO-{want['zero_stage']} but the processes run {describe(got)}")
    return got
