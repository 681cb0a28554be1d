"""Exponential moving average of the weights a stage trains: what is shipped, not the last noisy step.

The decay warms up as (1 + t) / (10 + t), so the average is not dominated by the initial weights of a short
stage, and then holds at a half-life of a tenth of the stage. At the end of a stage the averages are copied
into the model (the next stage and the exported model start from them).
"""

from __future__ import annotations

import torch

HALF_LIFE_FRACTION = 0.1


class WeightAverage:
    def __init__(self, parameters: dict[str, torch.nn.Parameter], stage_steps: int):
        self.parameters = parameters
        self.averages = {name: p.detach().clone() for name, p in parameters.items()}
        self.plan(stage_steps)

    def plan(self, stage_steps: int) -> None:
        """Set the decay for a stage of `stage_steps` steps (a `--minutes` stage knows it after its probe)."""
        half_life = max(1.0, HALF_LIFE_FRACTION * stage_steps)
        self.decay = 0.5 ** (1.0 / half_life)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        for name, parameter in self.parameters.items():
            self.averages[name].lerp_(parameter.detach(), weight)

    def copy_to_model(self) -> None:
        self.restore(self.averages)

    @torch.no_grad()
    def restore(self, values: dict[str, torch.Tensor]) -> None:
        """Put `values` (e.g. the weights kept before `copy_to_model`) back into the parameters."""
        for name, parameter in self.parameters.items():
            parameter.copy_(values[name])

    @torch.no_grad()
    def restart_from_parameters(self) -> None:
        """Make the current weights the average (when they are better than it, as the VAE gate may find)."""
        for name, parameter in self.parameters.items():
            self.averages[name].copy_(parameter.detach())

    def tensors(self) -> dict[str, torch.Tensor]:
        """For the run's checkpoint, under `name::average`."""
        return {f"{name}::average": average.cpu().contiguous() for name, average in self.averages.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, average in self.averages.items():
            key = f"{name}::average"
            if key in tensors:
                average.copy_(tensors[key])
