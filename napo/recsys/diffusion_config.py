"""RecConfig -> DreamRec / PreferDiff (napo.recsys.diffusion): the two names are settings of one model."""

from __future__ import annotations

from napo.recsys.diffusion import DiffusionRec

DIFFUSION_MODELS = {"DreamRec": "dreamrec", "PreferDiff": "preferdiff"}


def build_diffusion(cfg, num_items: int) -> DiffusionRec:
    """cfg: a napo.recsys.train.RecConfig with model DreamRec or PreferDiff."""
    return DiffusionRec(
        num_items, cfg.hidden, cfg.num_blocks, cfg.num_heads, cfg.dropout, cfg.max_len,
        objective=DIFFUSION_MODELS[cfg.model], steps=cfg.diffusion_steps, schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start, beta_end=cfg.beta_end, p_uncond=cfg.p_uncond,
        guidance=cfg.guidance_w, sampler=cfg.diffusion_sampler, ddim_stride=cfg.ddim_stride,
        eta=cfg.ddim_eta, lam=cfg.preferdiff_lambda, gamma=cfg.preferdiff_gamma,
        preferdiff_form=cfg.preferdiff_form, denoiser=cfg.denoiser, score_items=cfg.score_items,
        sample_seed=cfg.sample_seed)
