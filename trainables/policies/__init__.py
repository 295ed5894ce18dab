"""Selection policies: one registry of policy classes, one module per family, and the public contract check.

- :mod:`~neqtune.trainables.policies.base`: :class:`BudgetPolicy`, whose hooks the trainer calls, and
  :func:`register_policy`, the one way to add a policy (a built-in or a plug-in's).
- :mod:`~neqtune.trainables.policies.fill`: how a ranked or drawn order of units fills a budget (plain functions).
- :mod:`~neqtune.trainables.policies.study`: full, su, random and velocity (the study's).
- :mod:`~neqtune.trainables.policies.memory`: trady, rgn and medyate (the memory-budget successors).
- :mod:`~neqtune.trainables.policies.contract`: :func:`check_policy`, the contract every policy passes
  (``neqtune.check_policy``; not imported here: it runs the trainer, which imports this package).
"""

from __future__ import annotations

from neqtune.trainables.policies import memory as _memory  # noqa: F401  (registers trady, rgn, medyate)
from neqtune.trainables.policies import study as _study  # noqa: F401  (registers full, su, random, velocity)
from neqtune.trainables.policies.base import BudgetPolicy, PolicyContext, Probe, get_policy, policy_names, register_policy

__all__ = ["BudgetPolicy", "PolicyContext", "Probe", "get_policy", "policy_names", "register_policy"]
