"""deepserial: serial numbers and ownership watermarks for PyTorch models.

``import deepserial as ds`` reaches the whole workflow under one flat namespace::

    owner = ds.OwnerIdentity.generate()
    t = ds.train_teacher(ds.DataSpec("mnist5k"), ds.TrainConfig(epochs=20))
    acme = ds.issue(ds.loaded(t.model, t.manifest), owner, "acme")              # DSN customer model
    report = ds.evaluate_customer(ds.loaded(acme.student, acme.manifest), acme.serial)
    m = ds.embed_watermark(ds.get_scheme("new-label"), owner, ds.DataSpec("mnist5k"), ds.TrainConfig())
    verdict = ds.verify_watermark(m.key, ds.ModuleSuspect(m.model, (1, 28, 28)))  # p-value, decision
    attacked, log = ds.get_attack("fine-tuning").run(m.model, m.splits.attacker, ds.AttackBudget(epochs=5))

Your own network and data join through the registries: ``ds.register_model`` (any classifier
``nn.Module``, split into features and classifier by ``ds.as_split_net``), ``ds.register_dataset`` or a
path to data on disk; ``ds.list_models()``, ``ds.list_schemes()``, ``ds.list_attacks()`` and
``ds.list_datasets()`` say what is registered.

Names load lazily (PEP 562 module ``__getattr__``): ``import deepserial`` itself imports no torch, so
tools that need only the version start fast, and each name costs its module's import on first use.
``__all__`` and ``dir(deepserial)`` list every public name, and submodules (``ds.workflow``,
``ds.schemes``) are reachable as attributes too. Static checkers read the imports under
``TYPE_CHECKING`` at the end of this file.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from deepserial._version import __version__

# module -> the public names it defines; a module is imported on first access to one of its names
_EXPORTS: dict[str, tuple[str, ...]] = {
    # the vendor's workflow: teacher, customer models, watermarks, attack reports
    "deepserial.workflow": (
        "DataSpec",
        "Issued",
        "Marked",
        "Trained",
        "attack_model",
        "embed_watermark",
        "evaluate_customer",
        "issue",
        "loaded",
        "measure_model",
        "save_issued",
        "serial_from_licence",
        "train_teacher",
        "verify_watermark",
    ),
    "deepserial.artifacts": (
        "LoadedModel",
        "export_onnx",
        "load_key",
        "load_model",
        "read_manifest",
        "save_key",
        "save_model",
    ),
    "deepserial.identity": (
        "OwnerIdentity",
        "VerifierString",
    ),
    "deepserial.serial": (
        "SerialGeometry",
        "SerialNumber",
        "stamp",
    ),
    # protection schemes and attacks, by name through their registries
    "deepserial.schemes.base": (
        "SCHEMES",
        "OwnershipKey",
        "Provenance",
        "Scheme",
        "Verdict",
        "get_scheme",
        "register_scheme",
    ),
    "deepserial.schemes.dsn": ("DSNConfig",),
    "deepserial.attacks.base": (
        "ATTACKS",
        "Attack",
        "AttackBudget",
        "AttackLog",
        "attacker_share",
        "get_attack",
        "register_attack",
    ),
    # suspects, tracing, the ledger
    "deepserial.suspect": (
        "HTTPSuspect",
        "ModuleSuspect",
        "ONNXSuspect",
        "QueryBudgetError",
        "Suspect",
        "open_suspect",
    ),
    "deepserial.tracing": (
        "TraceResult",
        "trace",
    ),
    "deepserial.ledger": (
        "Ledger",
        "Licence",
    ),
    # networks and data: the built-in ones and yours
    "deepserial.nets": (
        "MODELS",
        "SplitNet",
        "create_model",
        "register_model",
    ),
    "deepserial.nets.adapters": ("as_split_net",),
    "deepserial.data": (
        "DATASETS",
        "DatasetBundle",
        "Splits",
        "TensorData",
        "load_dataset",
        "register_dataset",
        "split",
    ),
    # the one training loop and its settings; the registry class; errors
    "deepserial.training": (
        "TrainConfig",
        "TrainLog",
        "accuracy",
        "fit",
        "predict_logits",
        "seed_everything",
        "supervised_loss",
    ),
    "deepserial.registry": ("Registry",),
    "deepserial.errors": (
        "ConfigError",
        "DatasetError",
        "DeepSerialError",
        "GeometryError",
        "IdentityError",
        "InputError",
        "IntegrityError",
        "SerialNumberError",
    ),
}
_MODULE_OF: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackBudget",
    "AttackLog",
    "ConfigError",
    "DATASETS",
    "DSNConfig",
    "DataSpec",
    "DatasetBundle",
    "DatasetError",
    "DeepSerialError",
    "GeometryError",
    "HTTPSuspect",
    "IdentityError",
    "InputError",
    "IntegrityError",
    "Issued",
    "Ledger",
    "Licence",
    "LoadedModel",
    "MODELS",
    "Marked",
    "ModuleSuspect",
    "ONNXSuspect",
    "OwnerIdentity",
    "OwnershipKey",
    "Provenance",
    "QueryBudgetError",
    "Registry",
    "SCHEMES",
    "Scheme",
    "SerialGeometry",
    "SerialNumber",
    "SerialNumberError",
    "SplitNet",
    "Splits",
    "Suspect",
    "TensorData",
    "TraceResult",
    "TrainConfig",
    "TrainLog",
    "Trained",
    "Verdict",
    "VerifierString",
    "__version__",
    "accuracy",
    "as_split_net",
    "attack_model",
    "attacker_share",
    "create_model",
    "embed_watermark",
    "evaluate_customer",
    "export_onnx",
    "fit",
    "get_attack",
    "get_scheme",
    "issue",
    "list_attacks",
    "list_datasets",
    "list_models",
    "list_schemes",
    "load_dataset",
    "load_key",
    "load_model",
    "loaded",
    "measure_model",
    "open_suspect",
    "predict_logits",
    "read_manifest",
    "register_attack",
    "register_dataset",
    "register_model",
    "register_scheme",
    "save_issued",
    "save_key",
    "save_model",
    "seed_everything",
    "serial_from_licence",
    "split",
    "stamp",
    "supervised_loss",
    "trace",
    "train_teacher",
    "verify_watermark",
]


def list_schemes() -> list[str]:
    """Names of the registered protection schemes (``ds.SCHEMES.docs()`` adds each one's paper)."""
    from deepserial.schemes.base import SCHEMES  # lazy: `import deepserial` imports no torch

    return SCHEMES.names()


def list_attacks() -> list[str]:
    """Names of the registered attacks (``ds.ATTACKS.docs()`` adds each one's paper)."""
    from deepserial.attacks.base import ATTACKS  # lazy: `import deepserial` imports no torch

    return ATTACKS.names()


def list_models() -> list[str]:
    """Names of the registered networks, yours included (``ds.MODELS.docs()`` describes each)."""
    from deepserial.nets import MODELS  # lazy: `import deepserial` imports no torch

    return MODELS.names()


def list_datasets() -> list[str]:
    """Names of the registered data sets (a path to data on disk works wherever a name does)."""
    from deepserial.data import DATASETS  # lazy: `import deepserial` imports no torch

    return DATASETS.names()


def __getattr__(name: str) -> Any:
    """Import the module behind ``name`` on first access, then keep the value here."""
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a submodule: ds.workflow, ds.schemes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static checkers and IDEs see; at run time __getattr__ provides these names
    from deepserial.artifacts import LoadedModel, export_onnx, load_key, load_model, read_manifest, save_key, save_model
    from deepserial.attacks.base import (
        ATTACKS,
        Attack,
        AttackBudget,
        AttackLog,
        attacker_share,
        get_attack,
        register_attack,
    )
    from deepserial.data import DATASETS, DatasetBundle, Splits, TensorData, load_dataset, register_dataset, split
    from deepserial.errors import (
        ConfigError,
        DatasetError,
        DeepSerialError,
        GeometryError,
        IdentityError,
        InputError,
        IntegrityError,
        SerialNumberError,
    )
    from deepserial.identity import OwnerIdentity, VerifierString
    from deepserial.ledger import Ledger, Licence
    from deepserial.nets import MODELS, SplitNet, create_model, register_model
    from deepserial.nets.adapters import as_split_net
    from deepserial.registry import Registry
    from deepserial.schemes.base import SCHEMES, OwnershipKey, Provenance, Scheme, Verdict, get_scheme, register_scheme
    from deepserial.schemes.dsn import DSNConfig
    from deepserial.serial import SerialGeometry, SerialNumber, stamp
    from deepserial.suspect import HTTPSuspect, ModuleSuspect, ONNXSuspect, QueryBudgetError, Suspect, open_suspect
    from deepserial.tracing import TraceResult, trace
    from deepserial.training import (
        TrainConfig,
        TrainLog,
        accuracy,
        fit,
        predict_logits,
        seed_everything,
        supervised_loss,
    )
    from deepserial.workflow import (
        DataSpec,
        Issued,
        Marked,
        Trained,
        attack_model,
        embed_watermark,
        evaluate_customer,
        issue,
        loaded,
        measure_model,
        save_issued,
        serial_from_licence,
        train_teacher,
        verify_watermark,
    )
