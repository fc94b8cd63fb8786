"""Contrastive Multiview Coding (Tian et al. 2019): one encoder per view of an image,
contrasted across views against one memory bank per view."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.baselines.instdisc import EXACT_MAX_DATA
from pico.core.distributed import gather_no_grad
from pico.core.nce import bank_logits, estimate_log_z_all_ranks, nce_loss, update_bank_
from pico.data.color import normalize_lab, rgb_to_lab
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim

#: view rules of :class:`ViewSplit`; ``"auto"`` picks ``"lab"`` for 3-channel images and
#: ``"halves"`` for everything else
SPLITS = ("auto", "lab", "l_a_b", "halves", "interleaved")
#: ``"core"``: every view against view 0; ``"full"``: every pair of views
OBJECTIVES = ("core", "full")


def view_pairs(num_views: int, objective: str) -> list[tuple[int, int]]:
    """The view pairs ``(i, j)``, ``i < j``, whose losses CMC sums: with ``"core"`` the
    pairs with view 0 (the core view), with ``"full"`` all ``V (V - 1) / 2`` pairs (the
    full graph). With two views both give ``[(0, 1)]``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"CMC objective must be one of {OBJECTIVES}, got {objective!r}")
    if num_views < 2:
        raise ValueError(f"CMC needs at least 2 views, got {num_views}")
    if objective == "core":
        return [(0, j) for j in range(1, num_views)]
    return [(i, j) for i in range(num_views) for j in range(i + 1, num_views)]


def directed_pairs(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Both directions of every pair, ``(i, j)`` then ``(j, i)``: ``(a, b)`` contrasts the
    embeddings of view ``a`` with the memory bank of view ``b``."""
    return [d for i, j in pairs for d in ((i, j), (j, i))]


def cmc_loss(
    embeddings: Sequence[Tensor],
    banks: Tensor,
    index: Tensor,
    pairs: Sequence[tuple[int, int]],
    temperature: float = 0.07,
    noise_index: Tensor | None = None,
    log_z: Tensor | None = None,
) -> Tensor:
    """CMC's loss: over the view ``pairs`` the sum of ``L(i -> j) + L(j -> i)``.

    ``embeddings``: one ``(B, D)`` L2-normalised tensor per view; ``banks``: ``(V, N, D)``,
    one memory bank per view; ``index``: the batch's train rows (each example's positive
    is its own slot). ``L(a -> b)`` scores view ``a``'s embeddings against bank ``b``,
    ``z_a . f_b / temperature``, averaged over the batch:

    * exact softmax (``noise_index`` is ``None``): the cross-entropy over all N slots of
      bank ``b`` with the example's own slot as target;
    * NCE (:func:`~pico.core.nce.nce_loss`): the own slot against the ``K`` noise slots
      ``noise_index`` ``(B, K)`` (the same draws for every direction), with the fixed
      normaliser ``log_z[d]`` of the d-th direction of :func:`directed_pairs`.
    """
    if not temperature > 0:
        raise ValueError(f"CMC temperature must be > 0, got {temperature}")
    if banks.ndim != 3 or len(embeddings) != banks.shape[0]:
        raise ValueError(
            f"cmc_loss needs one (N, D) bank per view: {len(embeddings)} views, banks of "
            f"shape {tuple(banks.shape)}"
        )
    directions = directed_pairs(pairs)
    if noise_index is not None and (log_z is None or log_z.shape != (len(directions),)):
        raise ValueError(
            f"cmc_loss with NCE needs log_z of shape ({len(directions)},), one normaliser "
            f"per direction, got {None if log_z is None else tuple(log_z.shape)}"
        )
    num_data = banks.shape[1]
    total = embeddings[0].new_zeros((), dtype=torch.float32)
    for d, (a, b) in enumerate(directions):
        z, bank = embeddings[a].float(), banks[b].to(torch.float32)
        if noise_index is None or log_z is None:
            # the products of logits divided by a small temperature stay in float32
            with torch.autocast(z.device.type, enabled=False):
                logits = z @ bank.T / temperature
            total = total + F.cross_entropy(logits, index)
        else:
            positive = (z * bank[index]).sum(dim=1) / temperature
            noise = bank_logits(z, bank, noise_index, temperature)
            total = total + nce_loss(positive, noise, log_z[d], num_data)
    return total


class ViewSplit(nn.Module):
    """Cuts a batch of inputs, as the method receives them (normalised), into CMC's views.

    Rules (``rule``):

    * ``"lab"`` (3-channel RGB images): undo the input normalisation (``mean``, ``std``),
      convert to L*a*b* (:func:`~pico.data.color.rgb_to_lab`), map each channel's range
      onto [-1, 1] (:func:`~pico.data.color.normalize_lab`); views L (1 channel) and ab
      (2 channels), the paper's split of luminance and colour;
    * ``"l_a_b"``: the same conversion, three 1-channel views L, a and b (for the
      full-graph objective);
    * ``"halves"``, for data without colour channels: an image ``(C, H, W)`` is cut into
      its top rows ``[0, H // 2)`` and its bottom rows ``[H // 2, H)``; a feature vector
      ``(D,)`` into its first ``D // 2`` features and the rest. Contiguous halves, not
      interleaved pixels: interleaved rows or columns would be two near-copies of the
      whole image at half resolution, which a network can match by low-level continuity
      alone, while two halves share little but what the image shows as a whole (which
      digit it is), as L and ab share the scene but not its colours. On digits the
      halves gave the better features (bench/RESULTS.md, "CMC on digits");
    * ``"interleaved"``, the alternative kept for comparison: even rows against odd
      rows (even features against odd ones);
    * ``"auto"``: ``"lab"`` for 3-channel images, ``"halves"`` otherwise.

    ``shapes`` holds one example's shape per view.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        rule: str,
        input_shape: Sequence[int],
        kind: str | None = None,
        mean: Sequence[float] = (),
        std: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if rule not in SPLITS:
            raise ValueError(f"CMC split must be one of {SPLITS}, got {rule!r}")
        shape = tuple(int(s) for s in input_shape)
        kind = kind or ("image" if len(shape) == 3 else "tabular")
        expected = 3 if kind == "image" else 1
        if len(shape) != expected:
            raise ValueError(
                f"CMC's view split needs {kind} inputs of {expected} dimension(s), got input "
                f"shape {shape}"
            )
        if rule == "auto":
            rule = "lab" if kind == "image" and shape[0] == 3 else "halves"
        if rule in ("lab", "l_a_b") and (kind != "image" or shape[0] != 3):
            raise ValueError(
                f"CMC split={rule!r} converts RGB to L*a*b* and needs 3-channel images, got "
                f"{kind} inputs of shape {shape}; use split=halves"
            )
        cut = shape[1] if kind == "image" else shape[0]
        if rule in ("halves", "interleaved") and cut < 2:
            raise ValueError(
                f"CMC split={rule!r} cuts the {'rows' if kind == 'image' else 'features'} in "
                f"two and needs at least 2 of them, got input shape {shape}"
            )
        if rule in ("lab", "l_a_b") and (len(mean), len(std)) not in ((0, 0), (3, 3)):
            raise ValueError(
                "CMC needs one mean and one std per RGB channel to undo the input "
                f"normalisation, or neither, got {len(mean)} and {len(std)}"
            )
        self.rule = rule
        self.kind = kind
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]), persistent=False)
        if rule == "lab":
            self.shapes = [(1, *shape[1:]), (2, *shape[1:])]
        elif rule == "l_a_b":
            self.shapes = [(1, *shape[1:])] * 3
        else:
            # halves: the first part floor(n / 2) long; interleaved: the even ones first
            first = cut // 2 if rule == "halves" else cut - cut // 2
            parts = (first, cut - first)
            self.shapes = [
                (shape[0], part, shape[2]) if kind == "image" else (part,) for part in parts
            ]

    def forward(self, x: Tensor) -> list[Tensor]:
        """One tensor per view of the batch ``x``."""
        if self.rule in ("halves", "interleaved"):
            dim = x.ndim - 2 if self.kind == "image" else x.ndim - 1
            n = x.shape[dim]
            if self.rule == "halves":
                return [x.narrow(dim, 0, n // 2), x.narrow(dim, n // 2, n - n // 2)]
            even = torch.arange(0, n, 2, device=x.device)
            return [x.index_select(dim, even), x.index_select(dim, even[: n // 2] + 1)]
        rgb = x
        if self.mean.numel():
            rgb = x * self.std.to(x.dtype)[:, None, None] + self.mean.to(x.dtype)[:, None, None]
        lab = normalize_lab(rgb_to_lab(rgb))
        if self.rule == "lab":
            return [lab[:, :1], lab[:, 1:]]
        return [lab[:, :1], lab[:, 1:2], lab[:, 2:]]


class MultiViewEncoder(nn.Module):
    """The view split and one encoder per view. Its output, what the kNN and the linear
    probe read as the backbone's features, is the concatenation of the views' pooled
    features, as the paper evaluates CMC; ``out_dim`` is their sum. ``pico-export``
    writes it with ``parts=backbone`` only: the other exports rebuild one model."""

    def __init__(self, split: ViewSplit, encoders: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(encoders) != len(split.shapes):
            raise ValueError(
                f"{len(split.shapes)} views need as many encoders, got {len(encoders)}"
            )
        self.split = split
        self.encoders = nn.ModuleList(encoders)
        self.out_dims = [
            feature_dim(enc, shape) for enc, shape in zip(encoders, split.shapes, strict=True)
        ]
        self.out_dim = sum(self.out_dims)

    def view_features(self, x: Tensor) -> list[Tensor]:
        """Pooled features of each view, ``(B, out_dims[v])``."""
        return [enc(v) for enc, v in zip(self.encoders, self.split(x), strict=True)]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.view_features(x), dim=1)


class CMC(Method):
    """Contrastive Multiview Coding: each view of an image has its own encoder, backbone
    -> linear embedding (``proj_dim``) -> L2 normalisation, and its own memory bank of
    one feature per training row; an example's embedding in view ``a`` must pick its own
    slot in the bank of view ``b`` (:func:`cmc_loss`).

    * Views (``split``, see :class:`ViewSplit`): L and ab of L*a*b* for RGB images (the
      paper), L, a and b as three views, or for grayscale images and feature vectors two
      halves (top and bottom rows; first and second half of the features). The views
      are cut from one augmented view (the ``contrastive`` recipe) of each image. The
      paper augments by cropping and flipping only; colour jitter and random grayscale
      (``aug=cifar``'s recipe) change the ab view too, and a grayscale image has
      a = b = 0.
    * ``objective``: ``"core"`` sums the losses of the pairs with view 0 (L), ``"full"``
      those of every pair (:func:`view_pairs`); with two views they agree.
    * Loss: the exact softmax over the bank, or NCE against ``num_noise`` uniformly drawn
      slots with one normaliser per direction estimated on the first step, as
      :class:`~pico.baselines.instdisc.InstDisc` (``exact=None`` picks the exact softmax up
      to :data:`~pico.baselines.instdisc.EXACT_MAX_DATA` rows; ``num_noise`` is clamped to
      N). The paper's defaults: 128-d embeddings, temperature 0.07, bank momentum 0.5,
      NCE with 4096 noise slots (its softmax variant draws K slots; the exact softmax
      here takes all N).
    * After each optimizer step every view's bank moves towards the step's embeddings,
      ``slot <- normalise(m * slot + (1 - m) * z)``, gathered over ranks.

    The encoders are built by ``task.make_backbone`` for each view's input shape (the
    engine sets it to the run's model); the ``backbone`` built for the whole input is not
    used. ``self.backbone`` is the :class:`MultiViewEncoder`, so evaluation reads the
    concatenated features of all views, and :meth:`embed` and :meth:`knn_bank` the
    concatenated embeddings and banks, divided by ``sqrt(V)`` to keep unit length.
    """

    views = ("contrastive",)
    backbone: MultiViewEncoder
    # buffers (register_buffer in __init__), declared for the type checker
    memory_bank: Tensor
    log_z: Tensor
    log_z_known: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        split: str = "auto",
        objective: str = "core",
        proj_dim: int = 128,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        num_noise: int = 4096,
        exact: bool | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"CMC temperature must be > 0, got {temperature}")
        if not 0.0 <= bank_momentum <= 1.0:
            raise ValueError(f"CMC bank_momentum must lie in [0, 1], got {bank_momentum}")
        if proj_dim < 1:
            raise ValueError(f"CMC proj_dim must be >= 1, got {proj_dim}")
        if num_noise < 1:
            raise ValueError(f"CMC num_noise must be >= 1, got {num_noise}")
        if task.num_train < 1:
            raise ValueError("CMC needs a non-empty train split (task.num_train >= 1)")
        if task.input_shape is None:
            raise ValueError("CMC needs TaskInfo.input_shape to split the inputs into views")
        views = ViewSplit(split, task.input_shape, task.kind, task.mean, task.std)
        self.pairs = view_pairs(len(views.shapes), objective)
        if task.make_backbone is None:
            raise ValueError(
                f"CMC builds one encoder per view, for inputs of shapes {views.shapes}: pass "
                "TaskInfo(..., make_backbone=fn), fn(shape) returning a backbone for inputs "
                "of that shape, e.g. lambda shape: pico.models.SmallConvNet(shape[0])"
            )
        encoders = []
        for shape in views.shapes:
            try:
                encoders.append(task.make_backbone(shape))
            except ValueError as err:
                raise ValueError(
                    f"CMC split={views.rule!r} gives views of shapes {views.shapes}, and the "
                    f"model cannot take inputs of shape {shape}: {err}"
                ) from err
        self.backbone = MultiViewEncoder(views, encoders)
        self.heads = nn.ModuleList(nn.Linear(dim, proj_dim) for dim in self.backbone.out_dims)
        self.split = views.rule
        self.objective = objective
        self.temperature = temperature
        self.bank_momentum = bank_momentum
        self.num_data = task.num_train
        self.num_noise = min(num_noise, task.num_train)
        self.exact = task.num_train <= EXACT_MAX_DATA if exact is None else bool(exact)
        banks = F.normalize(torch.randn(len(views.shapes), task.num_train, proj_dim), dim=2)
        self.register_buffer("memory_bank", banks)
        self.register_buffer("log_z", torch.zeros(2 * len(self.pairs)))
        self.register_buffer("log_z_known", torch.tensor(False))
        # True once log_z is known to be set in this process (estimated or loaded).
        self._log_z_checked = False
        self._pending: tuple[Tensor, Tensor] | None = None

    def embed_views(self, x: Tensor) -> list[Tensor]:
        """L2-normalised float32 embeddings of each view of a batch, ``(B, proj_dim)``."""
        features = self.backbone.view_features(x)
        return [
            F.normalize(head(f).float(), dim=1)
            for head, f in zip(self.heads, features, strict=True)
        ]

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """The views' embeddings side by side, divided by ``sqrt(V)`` (unit length)."""
        z = self.embed_views(x)
        return torch.cat(z, dim=1) / math.sqrt(len(z))

    def knn_bank(self) -> Tensor:
        """The views' banks side by side, ``(N, V * proj_dim)``, divided by ``sqrt(V)``;
        row i is train row i, in the :meth:`embed` space."""
        views, rows, dim = self.memory_bank.shape
        return self.memory_bank.transpose(0, 1).reshape(rows, views * dim) / math.sqrt(views)

    def _normalisers(self, embeddings: Sequence[Tensor], noise_index: Tensor) -> Tensor:
        """``log_z`` per direction, estimated (averaged over ranks) if not yet known."""
        if not self._log_z_checked:
            estimates = [
                estimate_log_z_all_ranks(
                    bank_logits(
                        embeddings[a].detach(), self.memory_bank[b], noise_index, self.temperature
                    ),
                    self.num_data,
                )
                for a, b in directed_pairs(self.pairs)
            ]
            self.log_z.copy_(torch.where(self.log_z_known, self.log_z, torch.stack(estimates)))
            self.log_z_known.fill_(True)
            self._log_z_checked = True
        return self.log_z

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        (x,) = batch.views
        z = self.embed_views(x)
        index = batch.index
        if self.exact:
            loss = cmc_loss(z, self.memory_bank, index, self.pairs, self.temperature)
        else:
            noise_index = torch.randint(
                0, self.num_data, (len(index), self.num_noise), device=index.device
            )
            log_z = self._normalisers(z, noise_index)
            loss = cmc_loss(
                z, self.memory_bank, index, self.pairs, self.temperature, noise_index, log_z
            )
        self._pending = (index, torch.stack([v.detach() for v in z], dim=1))
        return {"loss": loss}

    def after_optimizer_step(self, info: StepInfo) -> None:
        if self._pending is None:
            return
        index, features = self._pending
        self._pending = None
        index, features = gather_no_grad(index), gather_no_grad(features)
        for view, bank in enumerate(self.memory_bank):
            update_bank_(bank, index, features[:, view], self.bank_momentum)
