"""Research run: -6/+6 bits with the key at other contrasts on the invalid side, against the product's reverse engineering."""

import sys
from pathlib import Path

import torch

from deepserial.experiments import dsn_security as S
from deepserial.report import mark_start

mark_start()
torch.set_num_threads(1)
cfg = S.CONFIGS["mnist5k"].model_copy(update={"dsn": {"amplitude": 6, "mix_scaled": 0.15}})
S.run(
    "mnist5k-amp6-scaled",
    Path("/tmp/amp_scaled0"),
    [0],
    config=cfg,
    work=Path("/tmp/amp_scaled0/work"),
    command=" ".join(sys.argv),
)
