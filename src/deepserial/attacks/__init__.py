"""Attacks on protected models, one module per attack (each cites its paper).

Every attack registers itself in :data:`deepserial.attacks.base.ATTACKS` under the name the papers use
and is called the same way: ``get_attack(name, options).run(model, attacker_data, budget)``.

The removal attacks of the Watermark-Robustness-Toolbox (Lukas et al., "SoK: How Robust is Image
Classification Deep Neural Network Watermarking?", IEEE S&P 2022) follow its defaults, each module
naming the WRT file it read: weight shifting, fine-pruning, regularization, neural laundering, label
smoothing, feature permutation, adversarial training, input preprocessing, weight quantization,
distillation, smooth retraining, cross-architecture retraining and their combinations.
"""

from deepserial.attacks import (  # noqa: F401  (register the attacks)
    adversarial_training,
    combined,
    cross_architecture,
    distillation,
    extraction,
    feature_permutation,
    fine_pruning,
    fine_tuning,
    input_preprocessing,
    label_smoothing,
    neural_cleanse,
    neural_laundering,
    overwrite,
    pruning,
    regularization,
    serial_search,
    smooth_retraining,
    transfer,
    weight_quantization,
    weight_shifting,
)
