"""What a budget counts: units (neurons, input channels), their costs, the study's schemes, a budget resolved against a model.

- :mod:`~neqtune.trainables.budget.units`: what a unit is, per layer kind, and its parameters.
- :mod:`~neqtune.trainables.budget.costs`: weight and activation elements of every unit, and how a mask is priced.
- :mod:`~neqtune.trainables.budget.schemes`: the study's schemes and their static sparse-update masks.
- :mod:`~neqtune.trainables.budget.resolve`: a budget section resolved against a model (amount, pricing, costs).
"""
