"""The budgeted-update trainer and its parts (plain PyTorch, no Ray).

Public surface:

- :func:`conv_neuron_params`: parameters of every conv neuron.
- :func:`channel_costs`: weight and activation elements of every conv's input channels and neurons.
- :class:`VelocityTracker`: neuron velocity on the velocity split (NEq rule).
- :func:`select_neurons`, :func:`select_units`: the selection policies, by name.
- :func:`su_update_mask`: the static sparse-update mask of a scheme.
- :func:`train`: one budgeted fine-tuning run.
"""

from __future__ import annotations

from trainables.config import ConfigError, TrialConfig
from trainables.costs import channel_costs, mask_memory
from trainables.models import build_model, model_names, register_model
from trainables.neurons import conv_neuron_params
from trainables.policies import policy_names, register_policy, select_neurons, select_units, su_update_mask
from trainables.trainer import train
from trainables.velocity import VelocityTracker

__all__ = [
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
