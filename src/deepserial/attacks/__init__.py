"""Attacks on protected models, one module per attack (each cites its paper).

Every attack registers itself in :data:`deepserial.attacks.base.ATTACKS` under the name the papers use
and is called the same way: ``get_attack(name, options).run(model, attacker_data, budget)``.
"""

from deepserial.attacks import (  # noqa: F401  (register the attacks)
    extraction,
    fine_tuning,
    neural_cleanse,
    overwrite,
    pruning,
    serial_search,
    transfer,
)
