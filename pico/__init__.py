"""pico: partial-label learning (PiCO and its baselines) and contrastive representation
learning in PyTorch.

The names a training loop composes are here: the methods, the method protocol, the
losses, the feature queue, the EMA helpers, heads, candidate-set generators and the
evaluation functions; the subpackages (``pico.pll``, ``pico.core``, ``pico.models``,
``pico.data``, ``pico.eval``, ``pico.engine``) hold the rest. ``import pico`` imports
neither Hydra nor OmegaConf: the parts that read Hydra configs (:class:`Trainer`,
:class:`Evaluator`, the data loaders, :func:`train` and :func:`evaluate`, which run what
``pico-train`` and ``pico-eval`` run) and the self-supervised baselines load on first
use::

    import pico

    task = pico.TaskInfo(num_classes, num_train, train_candidates=candidates)
    method = pico.PiCO(backbone, task)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from pico._lazy import lazy_exports
from pico.core import (
    FeatureQueue,
    cosine_momentum,
    cpc_loss,
    ema_update_,
    info_nce,
    invaspread_loss,
    jsd_mi_loss,
    margin_contrastive_loss,
    momentum_copy,
    nce_loss,
    nt_xent,
    sup_con,
    sup_con_from_labels,
    triplet_loss,
    triplet_loss_from_labels,
)
from pico.engine import Batch, Method, StepInfo, TaskInfo
from pico.eval import approximated_accuracy, covering_rate, knn_predict, topk_accuracy
from pico.models import MLPEncoder, SmallConvNet, feature_dim, mlp_head
from pico.pll import (
    CAVL,
    CC,
    LWS,
    PRODEN,
    RC,
    CandidateError,
    ContrastiveDisambiguation,
    PiCO,
    PiCOPlus,
    Supervised,
    cc_loss,
    generate_candidates,
    lws_loss,
    noisy_candidates,
    uniform_candidates,
    validate_candidates,
    weighted_cross_entropy,
)

if TYPE_CHECKING:
    from pico.api import Evaluation, evaluate, train
    from pico.baselines import (
        BYOL,
        CMC,
        CPC,
        DIM,
        InstDisc,
        InvaSpread,
        MoCo,
        MoCoV3,
        SimCLR,
        SimSiam,
        byol_loss,
    )
    from pico.engine import Callback, Trainer, TrainerConfig
    from pico.eval import Evaluator, linear_probe
    from pico.models import VisionTransformer, cifar_resnet, imagenet_resnet

#: the distribution that installs this package (``[project] name`` in pyproject.toml)
_DISTRIBUTION = "pico-pll"
#: ``[project] version`` in pyproject.toml, for a source tree that is not installed
_SOURCE_VERSION = "0.1.0"

try:
    __version__ = version(_DISTRIBUTION)
except PackageNotFoundError:
    __version__ = _SOURCE_VERSION

# lazy: the baselines import pico themselves (an eager import here would be a cycle), the
# trainer, evaluator and the train/evaluate entry points read Hydra configs, the ResNets
# import torchvision (seconds)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BYOL": "pico.baselines",
        "CMC": "pico.baselines",
        "CPC": "pico.baselines",
        "DIM": "pico.baselines",
        "InstDisc": "pico.baselines",
        "InvaSpread": "pico.baselines",
        "MoCo": "pico.baselines",
        "MoCoV3": "pico.baselines",
        "SimCLR": "pico.baselines",
        "SimSiam": "pico.baselines",
        "byol_loss": "pico.baselines",
        "Callback": "pico.engine",
        "Trainer": "pico.engine",
        "TrainerConfig": "pico.engine",
        "Evaluation": "pico.api",
        "evaluate": "pico.api",
        "train": "pico.api",
        "Evaluator": "pico.eval",
        "linear_probe": "pico.eval",
        "cifar_resnet": "pico.models",
        "imagenet_resnet": "pico.models",
        "VisionTransformer": "pico.models",
    },
    submodules=("data",),
)

__all__ = [
    "BYOL",
    "CAVL",
    "CC",
    "CMC",
    "CPC",
    "DIM",
    "LWS",
    "PRODEN",
    "RC",
    "Batch",
    "Callback",
    "CandidateError",
    "ContrastiveDisambiguation",
    "Evaluation",
    "Evaluator",
    "FeatureQueue",
    "InstDisc",
    "InvaSpread",
    "MLPEncoder",
    "Method",
    "MoCo",
    "MoCoV3",
    "PiCO",
    "PiCOPlus",
    "SimCLR",
    "SimSiam",
    "SmallConvNet",
    "StepInfo",
    "Supervised",
    "TaskInfo",
    "Trainer",
    "TrainerConfig",
    "VisionTransformer",
    "__version__",
    "approximated_accuracy",
    "byol_loss",
    "cc_loss",
    "cifar_resnet",
    "cosine_momentum",
    "covering_rate",
    "cpc_loss",
    "ema_update_",
    "evaluate",
    "feature_dim",
    "generate_candidates",
    "imagenet_resnet",
    "info_nce",
    "invaspread_loss",
    "jsd_mi_loss",
    "knn_predict",
    "linear_probe",
    "lws_loss",
    "margin_contrastive_loss",
    "mlp_head",
    "momentum_copy",
    "nce_loss",
    "noisy_candidates",
    "nt_xent",
    "sup_con",
    "sup_con_from_labels",
    "topk_accuracy",
    "train",
    "triplet_loss",
    "triplet_loss_from_labels",
    "uniform_candidates",
    "validate_candidates",
    "weighted_cross_entropy",
]
