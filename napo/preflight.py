"""What a run needs beyond its settings, checked before any data or weights load.

transformers finds a missing optional package or an unreachable Hub late, and says so with a
traceback: the tracker callback at trainer creation (``report_to: tensorboard`` without
tensorboard), the quantizer at model loading (``load_in_4bit`` without bitsandbytes), the repo
creation at trainer creation (``push_to_hub`` offline or without a token). :func:`check_environment`
asks the same questions first, with transformers' own availability checks, and stops with one line
(what is missing, what needs it, what to do). :data:`HUB_ERRORS` are the Hub failures a script
turns into one line when the Hub goes away later (at the push).
"""

from __future__ import annotations

from typing import Any

from data_prep.errors import UserError

# report_to name -> (transformers' availability function, what to install)
_TRACKERS = {
    "tensorboard": ("is_tensorboard_available", "tensorboard (the tracking extra: pip install -e '.[tracking]')"),
    "wandb": ("is_wandb_available", "wandb"),
    "trackio": ("is_trackio_available", "trackio"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "comet_ml": ("is_comet_available", "comet_ml"),
    "neptune": ("is_neptune_available", "neptune"),
    "clearml": ("is_clearml_available", "clearml"),
    "azure_ml": ("is_azureml_available", "azureml-core"),
    "dagshub": ("is_dagshub_available", "dagshub"),
    "codecarbon": ("is_codecarbon_available", "codecarbon"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "swanlab": ("is_swanlab_available", "swanlab"),
}


class EnvironmentProblem(UserError):
    """A package or service the settings need is not there."""


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    errors: list[type[BaseException]] = [HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled, ConnectionError]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:  # huggingface_hub < 1 speaks requests
        pass
    try:
        import requests

        errors.append(requests.exceptions.ConnectionError)
    except ImportError:
        pass
    return tuple(errors)


HUB_ERRORS = _hub_errors()


def missing_trackers(report_to: Any) -> list[tuple[str, str]]:
    """(report_to name, what to install) for each requested tracker that is not installed."""
    from transformers.integrations import integration_utils

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    out = []
    for name in names:
        check, package = _TRACKERS.get(name, (f"is_{name}_available", name))
        available = getattr(integration_utils, check, None)
        if available is not None and not available():
            out.append((name, package))
    return out


def check_environment(training_args: Any, model_args: Any = None) -> None:
    """Raise :class:`EnvironmentProblem` (one line) for the first thing the run needs and lacks."""
    for name, package in missing_trackers(getattr(training_args, "report_to", None)):
        raise EnvironmentProblem(
            f"report_to {name}: the {name} package is not installed; install {package}, or set report_to none"
        )
    if model_args is not None and (getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False)):
        from transformers.utils import import_utils

        if not import_utils.is_bitsandbytes_available():
            flag = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
            raise EnvironmentProblem(
                f"{flag} quantizes the base with bitsandbytes, which is not installed: pip install -e '.[qlora]' "
                f"(bitsandbytes >= 0.45), or set {flag} false"
            )
    if getattr(training_args, "push_to_hub", False):
        problem = hub_problem()
        if problem is not None:
            raise EnvironmentProblem(f"push_to_hub needs the Hugging Face Hub: {problem}, or set push_to_hub false")


def hub_problem() -> str | None:
    """Why an upload cannot work from here (offline mode, no token), or None."""
    import huggingface_hub

    if huggingface_hub.is_offline_mode():
        return ("HF_HUB_OFFLINE is set; unset it (or push the output_dir later with napo-export or "
                "huggingface_hub's upload_folder)")
    if huggingface_hub.get_token() is None:
        return "no Hugging Face token is set; run `hf auth login` or set HF_TOKEN"
    return None


def hub_failure(err: BaseException, output_dir: str) -> str:
    """One line for a Hub failure at trainer creation or at the push."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return (f"push_to_hub: the Hub could not be reached or refused the upload ({type(err).__name__}: {first}); "
            f"the run's files stay in {output_dir}: push them later, or set push_to_hub false")
