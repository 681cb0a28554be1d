"""Flow-matching sampling: DPM-Solver++ over flow sigmas and three-branch classifier-free guidance.

The reference always sets the scheduler's flow shift to 3.0 right before `set_timesteps`, whatever
the checkpoint says (P1), and rescales the guidance differences by their per-pixel channel norm on
the early steps whose integer timestep exceeds 930 (P20).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DPMSolverMultistepScheduler

TIMESTEP_SHIFT = 3.0
NORM_RESCALE_ABOVE_TIMESTEP = 930
NORM_EXPONENT = 0.4

# (full condition, text dropped, all dropped) velocities for the current latents, timestep and step index.
VelocityFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
StepCallback = Callable[[int, int, torch.Tensor], None]


def build_scheduler(config: dict) -> DPMSolverMultistepScheduler:
    values = {k: v for k, v in config.items() if not k.startswith("_")}
    values["flow_shift"] = TIMESTEP_SHIFT
    return DPMSolverMultistepScheduler.from_config(values)


def check_scheduler(config: dict) -> None:
    """Build the scheduler and take three steps on a dummy latent: diffusers accepts configs at construction
    that fail only in `set_timesteps` or `step` (no training steps, solver order 0, an unknown spacing), and
    a load should refuse those, not the first image."""
    scheduler = build_scheduler(config)
    latents = torch.zeros(1, 1, 1, 1)
    for t in scheduled_timesteps(scheduler, 3, latents.device):
        latents = scheduler.step(torch.zeros_like(latents), t, latents, return_dict=False)[0]


def scheduled_timesteps(scheduler: DPMSolverMultistepScheduler, num_inference_steps: int,
                        device: torch.device) -> torch.Tensor:
    """Set `scheduler` to `num_inference_steps` and return its timesteps, in order, for `sample` (and for a head
    that prepares per-step work up front)."""
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps


def _norm_divisor(difference: torch.Tensor) -> torch.Tensor:
    norm = difference.norm(dim=1, keepdim=True)
    return torch.where(norm > 1, norm**NORM_EXPONENT, torch.ones_like(norm))


def guide(full: torch.Tensor, text_dropped: torch.Tensor, all_dropped: torch.Tensor, timestep: int,
          all_cfg_scale: float, part_cfg_scale: float) -> torch.Tensor:
    part, whole = text_dropped - all_dropped, full - text_dropped
    if timestep > NORM_RESCALE_ABOVE_TIMESTEP:
        return all_dropped + part_cfg_scale * part / _norm_divisor(part) + all_cfg_scale * whole / _norm_divisor(whole)
    return all_dropped + part_cfg_scale * part + all_cfg_scale * whole


@torch.no_grad()
def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    scheduler: DPMSolverMultistepScheduler,
    timesteps: torch.Tensor,
    all_cfg_scale: float,
    part_cfg_scale: float,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Denoise `noise` over `timesteps`, which `scheduled_timesteps` has just set `scheduler` to."""
    latents = noise
    on_host = [int(t) for t in timesteps.cpu()]  # one transfer, not a device sync per step for the guidance branch
    for index, t in enumerate(timesteps):
        full, text_dropped, all_dropped = velocity(latents, t, index)
        guided = guide(full, text_dropped, all_dropped, on_host[index], all_cfg_scale, part_cfg_scale)
        latents = scheduler.step(guided, t, latents, return_dict=False)[0]
        if callback is not None:
            callback(index, len(timesteps), latents)
    return latents
