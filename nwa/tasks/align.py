"""Weight-to-text alignment (CLIP-style): model representations against concept texts.

Each concept is written as a prompt ("a photo of a {name}") and embedded once by a frozen text
encoder; a learned linear map projects those embeddings into the space of the (L2-normalized)
weight representations, and a learned logit scale sharpens the cosine similarities. Training is
cross-entropy over the training concepts; zero-shot evaluation scores models of held-out concepts
against the held-out concepts' texts only.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchmetrics as tm
from torch import nn

from nwa.errors import ConfigError
from nwa.tasks import Targets, Task
from nwa.text import TextEncoder, build_text_encoder

MODES = ("prototype", "clip")
_MASKED = -1e4  # logit of a non-candidate concept: exp() underflows to 0, losses stay finite
_MAX_SCALE = 100.0  # CLIP's clamp: larger scales destabilize training


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside distributed runs."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sizes(n: int, device: torch.device) -> list[int]:
    """The local batch size of every rank (ranks may differ on a last, uneven batch)."""
    mine = torch.tensor([n], device=device)
    every = [torch.zeros_like(mine) for _ in range(_world()[1])]
    dist.all_gather(every, mine)
    return [int(s) for s in every]


def gather_rows(x: torch.Tensor, sizes: list[int], grad: bool) -> torch.Tensor:
    """Every rank's rows concatenated in rank order.

    With ``grad`` the gather is differentiable (torch's functional collectives): the backward
    pass sums, on each rank, the gradients every rank's loss sends to its rows.
    Without it, the other ranks' rows would be constants and each rank would miss the gradient
    that reaches its features through the other ranks' losses.

    Shapes:
        - x: [sizes[rank], ...]
        - returns: [sum(sizes), ...]
    """
    pad = max(sizes) - x.shape[0]
    if pad:  # collectives need equal shapes on every rank
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    if grad:
        import torch.distributed._functional_collectives as fc

        # the public torch.distributed.nn.functional.all_gather is deprecated in favour of these
        gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd
        parts = gather(x, 0, dist.group.WORLD).split(max(sizes))
    else:
        parts = [torch.empty_like(x) for _ in sizes]
        dist.all_gather(parts, x)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class ContrastiveLoss(nn.Module):
    r"""Cross-entropy over scaled cosine similarities of model and text embeddings.

    ``prototype`` (the ProbeX alignment objective): each model against the texts of all candidate
    concepts, :math:`\mathrm{CE}(s\, m_i^\top T_{\text{cand}},\ y_i)`; no communication is needed
    under DDP: with equal per-rank batches (as DistributedSampler gives) DDP's gradient averaging
    already equals the full-batch gradient.

    ``clip``: in-batch pairs (model i, text of its concept). Under DDP the embeddings of every rank
    are gathered with gradients, so each rank scores its models against the global batch; labels
    are offset by the rank's position in it. Pairs sharing a concept are positives of each other
    (soft targets), not negatives. ``symmetric`` adds the text-to-model direction.

    Args:
        mode: ``prototype`` or ``clip``.
        symmetric: Average both directions in ``clip`` mode (ignored by ``prototype``).
    """

    def __init__(self, mode: str = "prototype", symmetric: bool = True) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"alignment mode {mode!r} is not one of {MODES}")
        self.mode, self.symmetric = mode, symmetric

    def forward(
        self,
        model_z: torch.Tensor,
        text_z: torch.Tensor,
        y: torch.Tensor,
        scale: torch.Tensor,
        candidates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss, averaged over this rank's models.

        Args:
            model_z: L2-normalized model embeddings.
            text_z: L2-normalized text embeddings: one per concept (``prototype``) or one per
                model, its concept's (``clip``).
            y: Each model's concept index.
            scale: The logit scale (a scalar tensor).
            candidates: Which concepts compete (``prototype``); default all.

        Shapes:
            - model_z: [B, D]; y: [B]
            - text_z: [C, D] (``prototype``) or [B, D] (``clip``); candidates: [C]
        """
        if self.mode == "prototype":
            logits = scale * model_z @ text_z.T
            if candidates is not None:
                logits = logits.masked_fill(~candidates, _MASKED)
            return F.cross_entropy(logits, y)
        return self._clip(model_z, text_z, y, scale)

    def _clip(
        self, model_z: torch.Tensor, text_z: torch.Tensor, y: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        rank, world = _world()
        all_m, all_t, all_y = model_z, text_z, y
        if world > 1:
            sizes = _sizes(len(y), y.device)
            all_m, all_t = gather_rows(model_z, sizes, True), gather_rows(text_z, sizes, True)
            all_y = gather_rows(y, sizes, False)
        # rows: this rank's models; columns: the global batch (local rows start at the offset,
        # which is what the positives of equal concepts reduce to when concepts are distinct)
        targets = (y[:, None] == all_y[None, :]).float()
        targets = targets / targets.sum(1, keepdim=True)
        loss = F.cross_entropy(scale * model_z @ all_t.T, targets)
        if self.symmetric:
            loss = (loss + F.cross_entropy(scale * text_z @ all_m.T, targets)) / 2
        return loss


def load_text_encoder(
    name: str | TextEncoder = "minilm", weights: str | None = None
) -> TextEncoder:
    """A text encoder: an instance as is; a name for :func:`nwa.text.build_text_encoder`
    (``minilm``, ``open_clip:<model>``, ``hf_clip``); or the import path of a
    :class:`~nwa.text.TextEncoder` subclass (``package.module.Class``, built with ``weights``
    when given), for encoders of your own."""
    if isinstance(name, TextEncoder):
        return name
    if "." in name and ":" not in name and "/" not in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            raise ConfigError(f"text encoder {name!r}: no such class to import") from None
        return cls() if weights is None else cls(weights=weights)
    from nwa.text.cache import default_cache_dir

    return build_text_encoder(name, weights, cache_dir=default_cache_dir(), batch_size=32)


def concept_prompts(names: Sequence[str], prompt: str = "a photo of a {}") -> list[str]:
    """The text of each concept: the prompt with the name (underscores read as spaces)."""
    if "{}" not in prompt:
        raise ConfigError(f"prompt {prompt!r} needs a '{{}}' where the concept name goes")
    return [prompt.format(n.replace("_", " ")) for n in names]


class TextAlignment(Task):
    """The alignment task: text projection, normalization, logit scale, loss and top-1 metric.

    Concept embeddings are computed once at construction (the encoder caches them on disk) and
    kept as a frozen buffer, so checkpoints carry them. Logits cover every concept of the data
    (``targets.names``, held-out ones included); those that are not candidates (by default the
    training concepts, set by :meth:`set_training_concepts`) are masked.

    Args:
        in_dim: Representation size (the encoder's ``out_dim``).
        targets: The data's targets (``multiclass``, names = concept names).
        text_encoder: Encoder name or import path (see :func:`load_text_encoder`), or an instance.
        text_weights: Local weights of the text encoder (CLIP); ``None`` for MiniLM.
        prompt: Template of a concept's text; ``{}`` is replaced by the concept name.
        mode: ``prototype`` (each model against all training concepts) or ``clip`` (in-batch).
        symmetric: Also the text-to-model direction in ``clip`` mode.
        embed_dim: Size of a shared space both sides are projected into; ``None`` projects the
            text into the representation space (as ProbeX does).
        temperature: Initial softmax temperature (logit scale = 1 / temperature).
        learn_temperature: Learn the logit scale (clamped to 100).
        hidden: Unused (the task has no classification head); kept for the task-factory signature.

    Shapes:
        - input: representations [B, in_dim]
        - output: logits [B, C] over every concept, non-candidates masked
    """

    kind = "multiclass"

    def __init__(
        self,
        in_dim: int,
        targets: Targets,
        text_encoder: str | TextEncoder = "minilm",
        text_weights: str | None = None,
        prompt: str = "a photo of a {}",
        mode: str = "prototype",
        symmetric: bool = True,
        embed_dim: int | None = None,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        hidden: int | None = None,
    ) -> None:
        super().__init__(in_dim, targets)
        if not targets.names:
            raise ConfigError("text alignment needs concept names (data target: concept)")
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.criterion = ContrastiveLoss(mode, symmetric)
        self.prompt = prompt
        self._encoder_spec = (text_encoder, text_weights)
        self._encoder: TextEncoder | None = None
        self.register_buffer("text_embeddings", self.encode_texts(targets.names))
        dim = embed_dim or in_dim
        # the weight side: identity (text mapped into the representation space) or a shared space
        self.head = nn.Identity() if embed_dim is None else nn.Linear(in_dim, embed_dim)
        self.text_proj = nn.Linear(self.text_embeddings.shape[1], dim)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(log_scale, requires_grad=learn_temperature)
        self.register_buffer("candidates", torch.ones(targets.n, dtype=torch.bool))

    def encode_texts(self, names: Sequence[str]) -> torch.Tensor:
        """Frozen, L2-normalized text-encoder embeddings of concepts' prompts. Shapes: -> [N, T]."""
        if self._encoder is None:
            self._encoder = load_text_encoder(*self._encoder_spec)
        texts = concept_prompts(names, self.prompt)
        return self._encoder.encode(texts, normalize=True).float()

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=_MAX_SCALE)

    def set_training_concepts(self, y: torch.Tensor) -> None:
        """Make the concepts of these training labels the candidates. Shapes: y: [N]."""
        mask = torch.zeros_like(self.candidates)
        mask[y[y >= 0].long().unique()] = True
        self.candidates.copy_(mask)

    def model_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        """Representations in the shared space, L2-normalized. Shapes: [B, in_dim] -> [B, D]."""
        return F.normalize(self.head(z), dim=-1)

    def text_features(self, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Projected, L2-normalized text embeddings (default: every concept's).
        Shapes: [C, T] -> [C, D]."""
        e = self.text_embeddings if embeddings is None else embeddings
        return F.normalize(self.text_proj(e.to(self.log_scale.device)), dim=-1)

    def forward(self, z: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.candidates if candidates is None else candidates
        logits = self.scale * self.model_embeddings(z) @ self.text_features().T
        return logits.masked_fill(~mask, _MASKED)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the candidate concepts, from :meth:`forward`'s logits (the
        prototype objective; the validation loss of both modes, as it does not depend on which
        models share a batch)."""
        return F.cross_entropy(out, y)

    def training_loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective of the chosen mode. Shapes: z: [B, in_dim]; y: [B]."""
        m, t = self.model_embeddings(z), self.text_features()
        if self.criterion.mode == "clip":
            t = t[y]
        return self.criterion(m, t, y, self.scale, self.candidates)

    def metrics(self) -> tm.MetricCollection:
        n = max(2, self.targets.n)
        return tm.MetricCollection(
            {"acc": tm.classification.MulticlassAccuracy(n, average="micro")}
        )

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return out.softmax(-1)
