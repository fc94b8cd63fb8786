"""DINO: self-distillation with no labels (Caron et al. 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import all_reduce_sum, get_world_size
from pico.core.ema import cosine_momentum, momentum_copy
from pico.core.multicrop import encode_views, multicrop_views
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU) to a ``bottleneck_dim`` code, L2
    normalised, then a weight-normalised linear layer to ``out_dim`` logits.

    The last layer is weight-normalised: its rows are normalised on use and scaled by
    ``last_layer_scale``, which stays at 1 when ``norm_last_layer`` (each output is then the
    cosine of the code and a unit direction) and is trained otherwise (DINO's option).
    ``batch_norm`` adds BN after both hidden linear layers (DINO's ``use_bn_in_head``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in (in_dim, hidden_dim):
            layers.append(nn.Linear(width, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer_scale = nn.Parameter(torch.ones(out_dim), requires_grad=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) features -> (B, out_dim) logits."""
        code = F.normalize(self.mlp(x), dim=1)
        weight = F.normalize(self.last_layer.weight, dim=1) * self.last_layer_scale.unsqueeze(1)
        return F.linear(code, weight)


def dino_loss(
    student: Sequence[Tensor],
    teacher: Sequence[Tensor],
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """Cross-entropy of the centred, sharpened teacher distribution of each global crop
    (``softmax((t - center) / teacher_temp)``) with the student's
    ``softmax(s / student_temp)`` of every other crop; the mean over rows and over the
    (teacher crop, student crop) pairs, a crop never paired with itself (the teacher's
    crops are the student's first ones). Computed in at least float32; the caller
    detaches ``teacher``."""
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=1) for t in teacher]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=1) for s in student]
    total, pairs = student[0].new_zeros((), dtype=torch.float32), 0
    for i, target in enumerate(targets):
        for v, log_p in enumerate(log_probs):
            if v != i:
                total = total - (target * log_p).sum(1).mean()
                pairs += 1
    return total / pairs


class DINO(Method):
    """Student backbone + :class:`DINOHead` distilled from an EMA teacher of both.

    The teacher sees the two global crops, the student all of them (plus
    ``num_local_crops`` local ones); :func:`dino_loss` compares every pair of different
    crops. The teacher's outputs are centred by ``center``, an EMA (``center_momentum``)
    of their batch mean over all processes, and sharpened by a temperature warmed up
    linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over the first
    ``teacher_temp_warmup_epochs`` epochs (at most 30 % of the run: the paper's 30 of
    100 epochs), then held. The teacher's momentum rises on a cosine from
    ``base_momentum`` to 1, the weight decay on a cosine from the optimizer's value to
    ``weight_decay_end_ratio`` times it (the paper: 0.04 -> 0.4). The head's last layer
    gets no update during the first ``freeze_last_layer_epochs`` epochs;
    ``head_batch_norm`` puts BN in the head's hidden layers (DINO's ``use_bn_in_head``),
    ``norm_last_layer=False`` trains the scale of the last layer's rows.
    """

    center: Tensor  # buffer (register_buffer in __init__), declared for the type checker

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_batch_norm: bool = False,
        norm_last_layer: bool = True,
        num_local_crops: int = 8,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup_epochs: int = 30,
        center_momentum: float = 0.9,
        base_momentum: float = 0.996,
        weight_decay_end_ratio: float = 10.0,
        freeze_last_layer_epochs: int = 1,
    ) -> None:
        super().__init__()
        temps = (student_temp, teacher_temp, warmup_teacher_temp)
        if min(temps) <= 0:
            raise ValueError(f"DINO temperatures must be > 0, got {temps}")
        for name, value in (("center_momentum", center_momentum), ("base_momentum", base_momentum)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DINO {name} must lie in [0, 1], got {value}")
        if weight_decay_end_ratio < 0:
            raise ValueError(
                f"DINO weight_decay_end_ratio must be >= 0, got {weight_decay_end_ratio}"
            )
        self.views = multicrop_views(num_local_crops)
        self.backbone = backbone
        width = feature_dim(backbone, task.input_shape)
        self.head = DINOHead(
            width, out_dim, hidden_dim, bottleneck_dim, head_batch_norm, norm_last_layer
        )
        self.teacher_backbone = momentum_copy(backbone)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.teacher_temp_warmup_epochs = teacher_temp_warmup_epochs
        self.center_momentum = center_momentum
        self.base_momentum = base_momentum
        self.weight_decay_end_ratio = weight_decay_end_ratio
        self.freeze_last_layer_epochs = freeze_last_layer_epochs

    def teacher_temperature(self, info: StepInfo) -> float:
        """Teacher temperature of epoch ``info.epoch``: linear from the warm-up value
        (first epoch) to ``teacher_temp`` (last warm-up epoch), then constant."""
        warmup = min(self.teacher_temp_warmup_epochs, math.ceil(0.3 * info.epochs))
        if info.epoch >= warmup:
            return self.teacher_temp
        share = info.epoch / max(warmup - 1, 1)
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * share

    def momentum(self, info: StepInfo) -> float:
        """Teacher momentum for the update after step ``info.step``: base first, 1 last."""
        return cosine_momentum(self.base_momentum, info.step, max(info.total_steps - 1, 1))

    def weight_decay_factor(self, info: StepInfo) -> float:
        """1 at the first step rising on a cosine to ``weight_decay_end_ratio`` at the last."""
        progress = min(info.step / max(info.total_steps - 1, 1), 1.0)
        ratio = self.weight_decay_end_ratio
        return ratio - (ratio - 1.0) * (math.cos(math.pi * progress) + 1.0) / 2.0

    @torch.no_grad()
    def update_center_(self, teacher: Tensor) -> None:
        """``center <- m * center + (1 - m) * mean`` of the teacher outputs (rows of all
        processes)."""
        total = all_reduce_sum(teacher.float().sum(0, keepdim=True))
        mean = total / (len(teacher) * get_world_size())
        self.center.mul_(self.center_momentum).add_(mean, alpha=1.0 - self.center_momentum)

    def _student(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    @torch.no_grad()
    def _teacher(self, x: Tensor) -> Tensor:
        return self.teacher_head(self.teacher_backbone(x))

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        student = encode_views(self._student, batch.views)
        teacher = encode_views(self._teacher, batch.views[:2])
        temp = self.teacher_temperature(info)
        loss = dino_loss(student, teacher, self.center, self.student_temp, temp)
        self.update_center_(torch.cat(teacher))
        return {"loss": loss}

    def before_optimizer_step(self, info: StepInfo) -> None:
        """No update of the head's last layer during the first ``freeze_last_layer_epochs``."""
        if info.epoch < self.freeze_last_layer_epochs:
            self.head.last_layer.weight.grad = None
            self.head.last_layer_scale.grad = None

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """Student backbone and head, each followed by its teacher."""
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def optim_parameters(self) -> list[nn.Parameter]:
        """Student backbone and head; never the teacher."""
        online = (self.backbone, self.head)
        return [p for module in online for p in module.parameters() if p.requires_grad]
