"""Non-finite guard: a NaN/inf loss or gradient never trains on silently.

``nonfinite: stop`` (default) ends the run with one line naming the step and the last good
checkpoint; ``nonfinite: skip`` drops that optimizer step (no parameter or optimizer-state update;
the scheduler and step counter still advance) and counts it in the logs (``guard/skipped_steps``).

For the LLM trainers (TRL's SFTTrainer, NAPOTrainer) :func:`attach_guards` adds two callbacks
to a built trainer: :class:`NonFiniteGuard` (checks the micro-batch losses of the step and the
gradients right before ``optimizer.step``) and ``napo.checkpoints.CompleteMarkerCallback``. The
recommender loop (napo/recsys/train.py) uses the same check and message (napo/nonfinite.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from napo.checkpoints import CompleteMarkerCallback, last_complete
from napo.nonfinite import MODES, NonFiniteError, check_mode, nonfinite_gradients, nonfinite_message


@dataclass
class GuardArguments:
    """Run-safety settings shared by the LLM scripts (YAML keys = field names)."""

    nonfinite: str = field(default="stop", metadata={"choices": list(MODES),
                                                     "help": "on a NaN/inf loss or gradient: stop (one line naming "
                                                             "the step and last good checkpoint) or skip the step"})

    overwrite_output_dir: bool = field(default=False, metadata={"help": "start a new run in an output_dir that holds "
                                                                    "another run, removing that run's files first "
                                                                    "(otherwise such a run stops with one line)"})

    def __post_init__(self):
        check_mode(self.nonfinite)


class NonFiniteGuard(TrainerCallback):
    """Checks each optimizer step; see the module docstring. Use :func:`attach_guards`."""

    def __init__(self, trainer, mode: str = "stop"):
        self.trainer, self.mode = trainer, check_mode(mode)
        self.bad_loss = False  # a micro-batch loss of the current step was NaN/inf
        self.skipped = 0

    def record_loss(self, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self.bad_loss = True

    def _any_process(self, flag: bool) -> bool:
        """The flag OR-ed over processes, so every rank stops or skips together."""
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return flag
        value = torch.tensor([float(flag)], device=accelerator.device)
        return bool(accelerator.reduce(value, reduction="sum").item() > 0)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        model = self.trainer.model
        bad_loss = self._any_process(self.bad_loss)
        bad_grad = self._any_process(nonfinite_gradients(model.parameters()))
        self.bad_loss = False
        if not (bad_loss or bad_grad):
            return
        what = "loss" if bad_loss else "gradient"
        step = f"step {state.global_step + 1} (epoch {state.epoch or 0:.2f})"
        if self.mode == "stop":
            raise NonFiniteError(nonfinite_message(what, step, last_complete(args.output_dir)))
        for p in model.parameters():  # the optimizer skips parameters without a gradient
            p.grad = None
        self.skipped += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.skipped and "loss" in logs:
            logs["guard/skipped_steps"] = self.skipped


def attach_guards(trainer, nonfinite: str = "stop", resume_from: str | None = None) -> NonFiniteGuard:
    """Add the non-finite guard and the checkpoint-complete marker to a built trainer (the marker
    also restores, from ``resume_from``, trainer counters no upstream checkpoint file holds).

    The guard sees each micro-batch loss by wrapping ``trainer.training_step`` on the instance
    (the trainer's loop calls ``self.training_step``); nothing of the trainer class changes.
    """
    guard = NonFiniteGuard(trainer, nonfinite)
    step_fn = trainer.training_step

    def training_step(*args, **kwargs):
        loss = step_fn(*args, **kwargs)
        guard.record_loss(loss)
        return loss

    trainer.training_step = training_step
    trainer.add_callback(guard)
    trainer.add_callback(CompleteMarkerCallback(trainer, resume_from))
    return guard
