"""Model parameter randomisation (Adebayo et al. 2018): re-initialised copies of a model, step by step.

Each step re-initialises its modules with their own `reset_parameters()` (BatchNorm's running statistics are reset
with it) under a fixed seed, on a CPU copy: the user's model is never altered, and the same seed gives the same
weights on any device. `cascading` randomises steps 1..k together at step k, `independent` step k alone.
Not for: finding the steps (layers.py) or measuring what the maps do (commands/sanity.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from btxrd_cam.layers import RandomisationStep

ORDERS = ("cascading", "independent")


def reinitialise(model: nn.Module, step: RandomisationStep, seed: int) -> list[str]:
    """Re-initialise the step's modules in place under `seed`; returns the modules with weights but no
    `reset_parameters()`, which are redrawn from N(0, 0.02) instead (none in timm's CNNs)."""
    without_reset = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in step.modules:
            for sub_name, module in model.get_submodule(name).named_modules(prefix=name):
                own = list(module.parameters(recurse=False))
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                elif own:
                    with torch.no_grad():
                        for parameter in own:
                            parameter.normal_(0.0, 0.02)
                    without_reset.append(sub_name)
    return without_reset


def step_seed(seed: int, index: int) -> int:
    """The seed of step `index`: the same in both orders, so step k draws the same weights whichever order runs."""
    return seed * 1000 + index


def randomised_models(
    model: nn.Module, steps: list[RandomisationStep], order: str, seed: int
) -> Iterator[tuple[RandomisationStep, nn.Module, list[str]]]:
    """(step, randomised CPU copy in eval mode, modules without reset_parameters) for each step in order."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}")
    trained = copy.deepcopy(model).cpu().eval()
    cascade = copy.deepcopy(trained) if order == "cascading" else None
    for index, step in enumerate(steps):
        current = cascade if cascade is not None else copy.deepcopy(trained)
        missing = reinitialise(current, step, step_seed(seed, index))
        yield step, current, missing
