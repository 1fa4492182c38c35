"""Runs a script body (`python tests/resume_driver.py MODULE ARGS...`) with test-only slowdowns.

For the kill tests (tests/test_resume.py): NAPO_TEST_SLOW=SECONDS sleeps after every training
step (so that a SIGKILL lands mid-run, after a checkpoint); NAPO_TEST_HANG_SAVE=STEP makes the
save of checkpoint-STEP hang half-way (after the model and optimizer files, before the RNG and
trainer state), after touching NAPO_TEST_FLAG, so that the test can kill the run during a save.
Neither changes what is computed. MODULE is napo.scripts.sft, napo.scripts.preference or
napo.scripts.recsys (for recsys, NAPO_TEST_SLOW sleeps after every epoch).
"""

import importlib
import os
import sys
import time
from pathlib import Path

SLOW = float(os.environ.get("NAPO_TEST_SLOW", "0"))
HANG = int(os.environ.get("NAPO_TEST_HANG_SAVE", "-1"))
FLAG = os.environ.get("NAPO_TEST_FLAG")


def patch_trainer():
    from transformers import Trainer

    step, save_rng = Trainer.training_step, Trainer._save_rng_state

    def training_step(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        time.sleep(SLOW)
        return loss

    def hanging_save_rng_state(self, output_dir):
        if self.state.global_step == HANG:
            Path(FLAG).write_text(output_dir)
            time.sleep(600)
        return save_rng(self, output_dir)

    Trainer.training_step = training_step
    Trainer._save_rng_state = hanging_save_rng_state


def patch_recsys():
    from napo.recsys import train

    validation_score = train.validation_score

    def slow_validation(*args, **kwargs):
        time.sleep(SLOW)
        return validation_score(*args, **kwargs)

    train.validation_score = slow_validation


if __name__ == "__main__":
    module = sys.argv[1]
    if module.endswith("recsys"):
        patch_recsys()
    else:
        patch_trainer()
    result = importlib.import_module(module).main(sys.argv[2:])
    raise SystemExit(result if isinstance(result, int) else 0)
