"""Instance discrimination with a non-parametric memory bank (Wu et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import gather_no_grad
from pico.core.nce import bank_logits, estimate_log_z_all_ranks, nce_loss, update_bank_
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim

#: Largest train split for which ``exact=None`` picks the exact softmax over the bank.
#: NCE with Z fixed at the first step needs N large: Z starts near N * exp(1 / (2 D T^2))
#: (about 2.2 N for D = 128, T = 0.07) while a matched slot later scores exp(1 / T),
#: about 1.6e6, so the model's "probability" exp(s / T) / Z exceeds 1 and NCE diverges
#: unless N is well above 7e5 (ImageNet: 1.28M). Digits (1.3k) and Fashion-MNIST (54k)
#: collapsed with NCE; the exact softmax over a 500k bank is one (B, N) product per step.
EXACT_MAX_DATA = 500_000


class InstDisc(Method):
    """Every training image is its own class, represented by a slot of a memory bank.

    Backbone -> linear embedding (``proj_dim``) -> L2 normalisation gives ``v``. The bank
    holds one L2-normalised ``proj_dim`` feature per training row (random at start; a
    buffer, so it is saved in checkpoints). The loss is either

    * the exact non-parametric softmax: cross-entropy of ``v @ bank.T / temperature``
      with the example's own slot as target (default when N <= ``EXACT_MAX_DATA``), or
    * NCE (:func:`~pico.core.nce.nce_loss`) against ``num_noise`` slots drawn uniformly
      with replacement on the device; the normaliser Z is estimated once, on the first
      step (:func:`~pico.core.nce.estimate_log_z`, averaged over ranks), and then kept
      in the ``log_z`` buffer (``log_z_known`` says whether it is set). ``num_noise``
      is clamped to N, so small data sets never draw more noise slots than examples.

    After each optimizer step the batch's slots move towards the features computed in
    the step: ``slot <- normalise(m * slot + (1 - m) * v)`` with ``m = bank_momentum``,
    gathered over ranks so every rank keeps the same bank.
    """

    views = ("contrastive",)
    # buffers (register_buffer in __init__), declared for the type checker
    memory_bank: Tensor
    log_z: Tensor
    log_z_known: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_dim: int = 128,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        num_noise: int = 4096,
        exact: bool | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"InstDisc temperature must be > 0, got {temperature}")
        if not 0.0 <= bank_momentum <= 1.0:
            raise ValueError(f"InstDisc bank_momentum must lie in [0, 1], got {bank_momentum}")
        if num_noise < 1:
            raise ValueError(f"InstDisc num_noise must be >= 1, got {num_noise}")
        if task.num_train < 1:
            raise ValueError("InstDisc needs a non-empty train split (task.num_train >= 1)")
        self.backbone = backbone
        self.head = nn.Linear(feature_dim(backbone, task.input_shape), proj_dim)
        self.temperature = temperature
        self.bank_momentum = bank_momentum
        self.num_data = task.num_train
        self.num_noise = min(num_noise, task.num_train)
        self.exact = task.num_train <= EXACT_MAX_DATA if exact is None else bool(exact)
        bank = F.normalize(torch.randn(task.num_train, proj_dim), dim=1)
        self.register_buffer("memory_bank", bank)
        self.register_buffer("log_z", torch.tensor(0.0))
        self.register_buffer("log_z_known", torch.tensor(False))
        # True once log_z is known to be set in this process (estimated or loaded).
        self._log_z_checked = False
        self._pending: tuple[Tensor, Tensor] | None = None

    def embed_views(self, x: Tensor) -> Tensor:
        """L2-normalised float32 embeddings ``v`` of a batch of views."""
        return F.normalize(self.head(self.backbone(x)).float(), dim=1)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return self.embed_views(x)

    def knn_bank(self) -> Tensor:
        """The memory bank, ``(N, proj_dim)`` L2-normalised; row i is train row i."""
        return self.memory_bank

    def _normaliser(self, noise_logits: Tensor) -> Tensor:
        """``log_z``, estimated from ``noise_logits`` (averaged over ranks) if not yet known."""
        if not self._log_z_checked:
            estimate = estimate_log_z_all_ranks(noise_logits, self.num_data)
            self.log_z.copy_(torch.where(self.log_z_known, self.log_z, estimate))
            self.log_z_known.fill_(True)
            self._log_z_checked = True
        return self.log_z

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        (x,) = batch.views
        v = self.embed_views(x)
        index = batch.index
        bank = self.memory_bank
        if self.exact:
            with torch.autocast(v.device.type, enabled=False):
                logits = v @ bank.T / self.temperature
            loss = F.cross_entropy(logits, index)
        else:
            noise_index = torch.randint(
                0, self.num_data, (len(index), self.num_noise), device=v.device
            )
            positive = (v * bank[index]).sum(dim=1) / self.temperature
            noise = bank_logits(v, bank, noise_index, self.temperature)
            loss = nce_loss(positive, noise, self._normaliser(noise), self.num_data)
        self._pending = (index, v.detach())
        return {"loss": loss}

    @torch.no_grad()
    def update_bank(self, index: Tensor, features: Tensor) -> None:
        """``bank[i] <- normalise(m * bank[i] + (1 - m) * f)`` for the rows ``index``
        (:func:`~pico.core.nce.update_bank_`)."""
        update_bank_(self.memory_bank, index, features, self.bank_momentum)

    def after_optimizer_step(self, info: StepInfo) -> None:
        if self._pending is None:
            return
        index, features = self._pending
        self._pending = None
        self.update_bank(gather_no_grad(index), gather_no_grad(features))
