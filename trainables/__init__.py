"""The budgeted-update trainer and its parts (plain PyTorch, no Ray).

Subpackages: :mod:`~neqtune.trainables.budget` (units, costs, schemes, resolved budgets),
:mod:`~neqtune.trainables.policies` (the policy registry and families), :mod:`~neqtune.trainables.update`
(the engine, masked optimizers, precision), :mod:`~neqtune.trainables.models` (the model registry).
The trainer, its config and its metrics are the modules at this level.

Public surface:

- :func:`conv_neuron_params`: parameters of every conv neuron.
- :func:`channel_costs`: weight and activation elements of every conv's input channels and neurons.
- :class:`VelocityTracker`: neuron velocity on the velocity split (NEq rule).
- :func:`select_neurons`, :func:`select_units`: the selection policies, by name.
- :func:`su_update_mask`: the static sparse-update mask of a scheme.
- :func:`train`: one budgeted fine-tuning run.
"""

from __future__ import annotations

from neqtune.trainables.budget.costs import channel_costs, mask_memory
from neqtune.trainables.budget.schemes import su_update_mask
from neqtune.trainables.budget.units import conv_neuron_params
from neqtune.trainables.config import ConfigError, TrialConfig
from neqtune.trainables.models.registry import build_model, model_names, register_model
from neqtune.trainables.policies import BudgetPolicy, policy_names, register_policy
from neqtune.trainables.policies.fill import select_neurons, select_units
from neqtune.trainables.policies.velocity import VelocityTracker
from neqtune.trainables.trainer import train

__all__ = [
    "BudgetPolicy",
    "ConfigError",
    "TrialConfig",
    "VelocityTracker",
    "build_model",
    "channel_costs",
    "conv_neuron_params",
    "mask_memory",
    "model_names",
    "policy_names",
    "register_model",
    "register_policy",
    "select_neurons",
    "select_units",
    "su_update_mask",
    "train",
]
