"""What each method minimises: the engine calls an Objective for every micro-batch's loss and
at its hooks (before each epoch, after each optimiser step)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harclip.model.classifier import class_text_loss
from harclip.model.feed import Batch, CachedSplit
from harclip.model.views import DeviceAugment
from harclip.runtime.distributed import ALONE, World


class Objective:
    """A method's loss: by default cross-entropy on the class head (with `label_smoothing`;
    the logs keep the plain cross-entropy, so runs with and without compare)."""

    wants_whole_view = False
    """Whether each Batch must carry the whole, uncropped view of its images."""
    label_smoothing = 0.0

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def class_loss(self, logits: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the cross-entropy to minimise, the plain cross-entropy to log)."""
        plain = F.cross_entropy(logits, labels)
        if not self.label_smoothing:
            return plain, plain.detach()
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing), \
            plain.detach()

    def loss(self, model: nn.Module, batch: Batch
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to minimise, class logits, detached [cross-entropy, image–text term]) for
        one micro-batch."""
        logits = model(batch.images)
        loss, logged = self.class_loss(logits, batch.labels)
        return loss, logits, torch.stack([logged, torch.zeros_like(logged)])

    def before_epoch(self, epoch: int, split: CachedSplit, augment: DeviceAugment,
                     world: World = ALONE) -> bool:
        """Hook for per-epoch work (A-CLIP's cached saliency, shared out over the processes),
        under the run's autocast; whether there was any."""
        return False

    def compile(self) -> None:
        """Compile the objective's own heavy computation (A-CLIP's teacher scoring); the stage
        compiles the image tower itself."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook for state that follows the weights (A-CLIP's EMA teacher)."""

    def state_dict(self) -> dict:
        """The objective's own training state, for resuming (A-CLIP: its teacher)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (its tensors may arrive on the CPU)."""


class ContrastiveObjective(Objective):
    """CE on the class head + λ × the class-level image–text term (`class_text_loss`).

    Each image is scored against the C class-prompt embeddings from the live text tower with
    the model's own loss family (softmax for CLIP, sigmoid for SigLIP). The class texts are the
    same in every process, so nothing is gathered across processes. Subclasses change how image
    features are computed (A-CLIP: from the kept tokens only).
    """

    def __init__(self, prompts: nn.Module, weight: float, label_smoothing: float = 0.0) -> None:
        super().__init__(label_smoothing)
        self.prompts, self.weight = prompts, weight

    def image_features(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model.image_features(batch.images)

    def loss(self, model, batch):
        features = self.image_features(model, batch)
        logits = model.head(features)
        cross_entropy, logged = self.class_loss(logits, batch.labels)
        if self.weight:
            image_text = class_text_loss(features, self.prompts(model.clip), batch.labels,
                                         model.clip)
        else:  # A-CLIP with λ = 0: masking alone, no text tower to run (nor, maybe, built)
            image_text = cross_entropy.new_zeros(())
        return (cross_entropy + self.weight * image_text, logits,
                torch.stack([logged, image_text.detach()]))
