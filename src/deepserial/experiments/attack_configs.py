"""The settings and shared rules of ``reproduce attacks``: one place below the three runners.

:mod:`deepserial.experiments.attacks` (DSN and the dispatch), :mod:`~deepserial.experiments.watermark_attacks`
(each watermark's paper's attacks) and :mod:`~deepserial.experiments.wrt_attacks` (the WRT removal suite)
all read the per-data-set configuration, the attack plans, DSN's published figures, the rule of when an
attack "worked" and the report footer. Kept here, they import this module and not each other's run code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "CONFIGS",
    "HEADLINE",
    "PAPER",
    "PLANS",
    "SUITES",
    "WORKED_RULE",
    "AttackExperiment",
    "attack_worked",
    "footer",
    "reproduce_command",
]


class AttackExperiment(BaseModel):
    """The declarative configuration of ``reproduce attacks`` for one data set."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    teacher_epochs: int
    student_epochs: int
    batch_size: int = 128
    attack_epochs: int = 10
    attack_lr: float = 1e-3
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    prune_rates: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    brute_force_tries: int = 100_000
    reverse_restarts: int = 5
    reverse_steps: int = 300
    serial_search: bool = True
    neural_cleanse: bool = True
    nc_steps: int = 400  # Neural Cleanse's joint search steps (its default)
    # watermark schemes (``watermark_attacks``): sparse fine-tuning after pruning, extraction query volumes
    # (shares of the attacker's split), the other data set's samples for transfer, recovery epochs (§8.4: 6)
    sgd_fine_tuning: bool = True  # also fine-tune with SGD at attack_lr (null embedding Table 14's optimiser)
    embed_attempts: int = 3  # keys tried until the owner's watermark verifies on the model to attack
    watermark_epochs: int | None = None  # None: the epochs of `reproduce <scheme>` on the data set
    prune_finetune_epochs: int = 1
    extraction_volumes: tuple[float, ...] = (0.25, 0.5, 1.0)
    transfer_samples: int = 5000
    recovery_epochs: int = 6
    # the WRT suite (``--suite wrt``, :mod:`deepserial.experiments.wrt_attacks`): attacker shares, and the
    # suite's columns by label (None: all of them)
    wrt_fractions: tuple[float, ...] = (0.1, 0.4)
    wrt_attacks: tuple[str, ...] | None = None
    limit: int | None = None


CONFIGS = {
    "mnist5k": AttackExperiment(dataset="mnist5k", teacher_epochs=20, student_epochs=40),
    "fashion-mnist": AttackExperiment(dataset="fashion-mnist", teacher_epochs=8, student_epochs=12, batch_size=256),
}

# The attacks each watermark's own paper evaluates (the baselines: those their papers evaluate).
PLANS: dict[str, tuple[str, ...]] = {
    "null-embedding": ("fine_tuning", "pruning", "neuron_pruning", "neural_cleanse", "extraction", "transfer"),
    "new-label": ("fine_tuning", "pruning"),
    "deepsigns-hidden": ("fine_tuning", "pruning", "overwrite"),
    "deepsigns-output": ("fine_tuning", "pruning", "overwrite"),
    "zhang-noise": ("fine_tuning", "pruning"),
    "zhang-content": ("fine_tuning", "pruning"),
    "zhang-unrelated": ("fine_tuning", "pruning"),
    "adi": ("fine_tuning",),
    "uchida": ("fine_tuning", "pruning"),
}

# DSN (arXiv:2011.08960), MNIST rows, attacker data 10/20/30/40%.
PAPER = {
    "source": "Tang, Du, Hu, Deep Serial Number (arXiv:2011.08960), Tables 3-6, MNIST; 2023 version for the "
    "reverse-engineered serial number",
    "fine_tuning": [94.7, 95.4, 96.6, 97.0],
    "from_scratch": [93.2, 94.5, 95.7, 96.7],
    "pruning_rates": [0.1, 0.2, 0.3, 0.4],
    "pruning_with_sn": [98.4, 98.4, 98.4, 98.4],
    "pruning_without_sn": [8.7, 8.3, 9.7, 9.9],
    "transfer": [93.6, 94.5, 95.6, 96.9],
    "overwrite": [93.2, 93.7, 94.3, 95.8],
    "overwrite_cost": "about twice the cost of training from scratch",
    "reverse_engineered": "48.8 +/- 25.1% (best 68.9%)",
}


SUITES = ("papers", "wrt")


# What each fraction attack's headline accuracy is: the raw input for removal, the adversary's new
# serial number for overwriting (what Tables 3, 5 and 6 report).
HEADLINE = {"fine_tuning": "raw_acc", "from_scratch": "raw_acc", "transfer": "raw_acc", "overwrite": "new_sn_acc"}

# When an attack on DSN "worked", in one place (seeds summary, reports, README and docs/results.md).
WORKED_RULE = (
    "an attack worked when its model's final accuracy (after the last epoch: without the serial number for "
    "removal, with the adversary's new one for overwriting) reaches the final accuracy of training from "
    "scratch on the same attacker data"
)


def attack_worked(final_acc: float, scratch_final_acc: float) -> bool:
    """Whether a removal or overwriting attack worked (:data:`WORKED_RULE`).

    The final accuracy, not the best epoch's: an attacker keeps the model the attack ends with, and a
    model that passed 15% in its first epoch and ended at chance removed nothing. The bar is the
    from-scratch control on the same data, not chance: an attack that ends below it gave the attacker
    less than ignoring the protected model and training their own, which is what the protection
    promises (DSN §3.5: an attack should cost about as much as training from scratch).
    """
    return final_acc >= scratch_final_acc


def footer(rep: dict[str, Any]) -> list[str]:
    """The last lines of every attack report: seed, machine, and the command that reproduces it."""
    env = rep["environment"]
    return [
        f"Seed {rep['seed']}; wall time {rep['wall_s']:.0f} s on {env['cpu']} ({env['cpu_count']} cores), "
        f"torch {env['torch']}.",
        "",
        f"Reproduce: `{reproduce_command(rep)}`.",
        "",
    ]


def reproduce_command(rep: dict[str, Any], extra: str = "") -> str:
    """The command that re-creates a report; with its signing time, the same keys and serial numbers."""
    when = f"SOURCE_DATE_EPOCH={rep['signed_at_epoch']} " if "signed_at_epoch" in rep else ""
    seed = f" --seed {rep['seed']}" if rep.get("seed") else ""
    return f"{when}deepserial reproduce attacks --scheme {rep['scheme']} --dataset {rep['dataset']}{seed}{extra}"
