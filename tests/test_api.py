"""Tests of the flat public API (``import deepserial as ds``) and of bringing your own model and data:
``ds.as_split_net``, ``ds.register_model``, ``ds.TensorData.from_arrays`` / ``from_dataset`` and
``ds.register_dataset``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deepserial as ds
from deepserial.errors import ConfigError, DatasetError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_every_name_in_all_resolves_and_dir_lists_it() -> None:
    assert len(ds.__all__) == len(set(ds.__all__)) and ds.__all__ == sorted(ds.__all__)
    for name in ds.__all__:
        assert getattr(ds, name) is not None, name
    assert set(ds.__all__) <= set(dir(ds))
    for name in ("issue", "evaluate_customer", "embed_watermark", "verify_watermark", "get_attack", "trace"):
        assert name in ds.__all__
    assert ds.issue is ds.workflow.issue and ds.trace is ds.tracing.trace  # submodules reachable too
    assert ds.open_suspect.__module__ == "deepserial.suspect"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        ds.no_such_name  # noqa: B018


def test_import_is_lazy_and_from_import_works() -> None:
    code = (
        "import sys, deepserial as ds\n"
        "assert 'torch' not in sys.modules, 'import deepserial imported torch'\n"
        "from deepserial import TensorData, list_models\n"
        "assert 'torch' in sys.modules and 'dsn_mnist' in list_models()\n"
        "print(ds.__version__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": SRC}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ds.__version__


# ----- your own network ----------------------------------------------------------------------------
class UserNet(nn.Module):
    """A classifier as users write them: the final layer applied to a flat vector inside forward."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Linear(24, 10), nn.ReLU(), nn.Linear(10, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.body(x)), 1))


class SoftmaxNet(UserNet):
    """Applies something after its last linear layer: splitting there would change the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), 1)


def test_split_at_a_named_child_computes_what_the_model_computes() -> None:
    torch.manual_seed(0)
    model = UserNet().eval()
    x = torch.rand(5, 3, 8, 8)
    for name in ("head.2", None):  # named, and found as the last nn.Linear
        net = ds.as_split_net(model, classifier=name, input_shape=(3, 8, 8)).eval()
        assert isinstance(net, ds.SplitNet) and net.feature_dim == 10 and net.classifier.out_features == 4
        assert net.features(x).shape == (5, 10)
        assert torch.allclose(net(x), model(x), atol=1e-6)
    assert isinstance(model.head[2], nn.Linear)  # the user's model is left as it was
    assert not any(p1.data_ptr() == p2.data_ptr() for p1 in net.parameters() for p2 in model.parameters())
    assert ds.as_split_net(net) is net


def test_a_split_can_be_sized_on_the_meta_device() -> None:
    """Model files are checked against a network built on the meta device: the split must build there."""
    with torch.device("meta"):
        net = ds.as_split_net(UserNet(), input_shape=(3, 8, 8))
    assert next(net.parameters()).is_meta and net.feature_dim == 10


def test_split_from_two_modules() -> None:
    features = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU())
    net = ds.as_split_net(features=features, classifier=nn.Linear(16, 4), input_shape=(3, 8, 8))
    assert net.features is features and net.feature_dim == 16 and net(torch.rand(2, 3, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": SoftmaxNet()}, "changes its output"),
        ({"model": UserNet(), "classifier": "head.1"}, "ReLU, not an nn.Linear"),
        ({"model": UserNet(), "classifier": "fc"}, "has no child 'fc'; its children: body, pool, head"),
        ({"model": UserNet(), "classifier": "head.0"}, "breaks its forward"),
        ({"model": nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())}, "no nn.Linear child"),
        ({"features": nn.Flatten(), "classifier": nn.Linear(3 * 8 * 8, 4), "model": UserNet()}, "not both"),
        ({"features": nn.Identity(), "classifier": nn.Linear(5, 4)}, "classifier takes vectors of 5"),
        ({"model": UserNet(channels=1)}, "does not take inputs of shape"),
    ],
)
def test_a_wrong_split_is_refused_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        ds.as_split_net(**kwargs, input_shape=(3, 8, 8))
    assert "\n" not in str(exc.value)


@pytest.fixture
def user_model() -> Iterator[str]:
    ds.register_model("test_user_net", lambda shape, classes: UserNet(shape[0], classes), doc="a user's net")
    yield "test_user_net"
    ds.MODELS.unregister("test_user_net")


def test_a_registered_user_network_is_built_saved_and_loaded_by_name(user_model: str, tmp_path: Path) -> None:
    assert user_model in ds.list_models() and ds.MODELS.doc(user_model) == "a user's net"
    torch.manual_seed(0)
    model = ds.create_model(user_model, (3, 8, 8), 4)
    assert isinstance(model, ds.SplitNet) and model.classifier.out_features == 4
    manifest = {"arch": user_model, "input_shape": [3, 8, 8], "num_classes": 4}
    ds.save_model(tmp_path / "m.safetensors", model, manifest)
    back = ds.load_model(tmp_path / "m.safetensors")
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(back.model(x), model.eval()(x))
    with pytest.raises(ConfigError, match="already registered"):
        ds.register_model(user_model, lambda shape, classes: UserNet(shape[0], classes))


def test_a_builder_that_ignores_num_classes_is_refused() -> None:
    ds.register_model("test_bad_net", lambda shape, classes: UserNet(shape[0], 3))
    try:
        with pytest.raises(ConfigError, match="built 3 outputs for 5 classes"):
            ds.create_model("test_bad_net", (3, 8, 8), 5)
    finally:
        ds.MODELS.unregister("test_bad_net")


# ----- your own data -------------------------------------------------------------------------------
def test_from_arrays_accepts_the_common_layouts() -> None:
    y = np.arange(6) % 3
    hwc = np.random.default_rng(0).integers(0, 256, size=(6, 10, 12, 3), dtype=np.uint8)
    d = ds.TensorData.from_arrays(hwc, y)
    assert d.x.shape == (6, 3, 10, 12) and d.x.dtype == torch.float32 and d.y.dtype == torch.int64
    assert float(d.x[1, 2, 3, 4]) == pytest.approx(hwc[1, 3, 4, 2] / 255.0)
    grey = ds.TensorData.from_arrays(torch.rand(6, 9, 9), torch.tensor(y)[:, None])
    assert grey.x.shape == (6, 1, 9, 9) and grey.y.shape == (6,)
    chw = ds.TensorData.from_arrays(np.zeros((6, 3, 4, 3), np.float32), y, channels_last=False)
    assert chw.x.shape == (6, 3, 4, 3)
    src = np.full((6, 1, 5, 5), 0.5, np.float32)
    copy = ds.TensorData.from_arrays(src, y)
    src[:] = 0
    assert float(copy.x.min()) == 0.5  # the result owns its memory


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.full((2, 1, 4, 4), 1.5, np.float32), [0, 1], r"float images must lie in \[0, 1\]"),
        (np.full((2, 1, 4, 4), 300), [0, 1], "integer images must hold 0-255"),
        (np.zeros((2, 4)), [0, 1], "images must be"),
        (np.zeros((2, 1, 4, 4)), [0.0, 1.0], "labels must be integer"),
        (np.zeros((2, 1, 4, 4)), [0, -1], "class indices must be >= 0"),
        (np.zeros((2, 1, 4, 4)), [0, 1, 2], "2 images but 3 labels"),
        (np.array([["a"]] * 2), [0, 1], "images must be"),
    ],
)
def test_from_arrays_refuses_bad_data(x: object, y: object, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        ds.TensorData.from_arrays(x, y)


class PairDataset(torch.utils.data.Dataset):
    """A map-style dataset of (image, label) pairs, images as ``ToTensor`` or PIL would give them."""

    def __init__(self, n: int, channels_last_uint8: bool = False) -> None:
        self.n, self.hwc = n, channels_last_uint8

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[object, object]:
        if self.hwc:
            return np.full((8, 8, 3), i, np.uint8), np.int64(i % 2)
        return torch.full((3, 8, 8), i / 10), torch.tensor(i % 2)


def test_from_dataset_reads_every_pair() -> None:
    d = ds.TensorData.from_dataset(PairDataset(5))
    assert d.x.shape == (5, 3, 8, 8) and d.y.tolist() == [0, 1, 0, 1, 0]
    assert float(d.x[3].mean()) == pytest.approx(0.3)
    pil_like = ds.TensorData.from_dataset(PairDataset(4, channels_last_uint8=True), limit=3)
    assert pil_like.x.shape == (3, 3, 8, 8) and float(pil_like.x[2].max()) == pytest.approx(2 / 255)
    with pytest.raises(DatasetError, match="not an \\(image, label\\) pair"):
        ds.TensorData.from_dataset([torch.zeros(3, 4, 4)])
    with pytest.raises(DatasetError, match="no length"):
        ds.TensorData.from_dataset(iter([]))


def test_registered_in_memory_data_flows_through_dataspec() -> None:
    rng = np.random.default_rng(0)
    train = ds.TensorData.from_arrays(rng.integers(0, 256, (60, 12, 12, 3), dtype=np.uint8), np.arange(60) % 3)
    test = ds.TensorData.from_arrays(rng.integers(0, 256, (15, 12, 12, 3), dtype=np.uint8), np.arange(15) % 3)
    key = ds.register_dataset("Test_Mine", train, test, description="sixty random images")
    try:
        assert key == "test-mine" and "test-mine" in ds.list_datasets()
        assert ds.DATASETS.doc("test-mine") == "sixty random images"
        splits = ds.DataSpec("test_mine", seed=0).load()
        assert splits.sizes() == {"owner": 36, "attacker": 24, "test": 15}
        assert splits.owner.x.shape[1:] == (3, 12, 12)
        bundle = ds.load_dataset("test-mine", limit=30)
        assert bundle.num_classes == 3 and len(bundle.train) == 30 and bundle.source == "sixty random images"
    finally:
        ds.DATASETS.unregister("test-mine")
    with pytest.raises(DatasetError, match="TensorData parts"):
        ds.register_dataset("test-bad", np.zeros((2, 1, 4, 4)))  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="single class"):
        ds.register_dataset("test-one-class", ds.TensorData.from_arrays(np.zeros((4, 1, 4, 4)), [0, 0, 0, 0]))
    assert "test-one-class" not in ds.list_datasets()
