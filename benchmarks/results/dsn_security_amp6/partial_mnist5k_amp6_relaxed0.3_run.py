"""Research run: -6/+6 bits with twice the relaxed training keys, against the product's reverse engineering."""

import sys
from pathlib import Path

import torch

from deepserial.experiments import dsn_security as S
from deepserial.report import mark_start

mark_start()
torch.set_num_threads(1)
cfg = S.CONFIGS["mnist5k"].model_copy(update={"dsn": {"amplitude": 6, "mix_relaxed": 0.3}})
S.run(
    "mnist5k-amp6-relaxed",
    Path("/tmp/amp_relax0"),
    [0],
    config=cfg,
    work=Path("/tmp/amp_relax0/work"),
    command=" ".join(sys.argv),
)
