"""Component offload for small GPUs: the VLM, the generation decoder and the VAE take turns on the GPU.

Each component rests in CPU memory; the first time any of its modules runs, the component that is on the
GPU goes back to the CPU and this one moves in. A text-to-image call therefore holds at most the largest
component on the GPU (the 1.7B head or the 2B VLM in bf16: about 4 GB) instead of all 7.7 GB, at the
price of a few host-device copies per image (VLM once, VAE for the conditions and the decode, head once
for all denoising steps).
"""

from __future__ import annotations

import torch
from torch import nn


class ComponentOffload:
    def __init__(self, components: dict[str, nn.Module], device: torch.device, rest: torch.device = torch.device("cpu")):
        self.components = components
        self.device = torch.device(device)
        self.rest = torch.device(rest)
        self.resident: str | None = None
        self.moves: list[str] = []  # component names in the order they were brought in (for tests and logs)
        self.handles = []
        for name, component in components.items():
            component.to(self.rest)
            for module in component.modules():
                self.handles.append(module.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str):
        def bring_in(module, args):
            if self.resident != name:
                self.activate(name)

        return bring_in

    def activate(self, name: str) -> None:
        if self.resident is not None:
            self.components[self.resident].to(self.rest)
        self.components[name].to(self.device)
        self.resident = name
        self.moves.append(name)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
