"""Knowledge distillation: a trained teacher's softened outputs as a second training target.

The teacher (in practice the ImageNet-initialised ResNet-50 fine-tuned on our data) sees the same augmented batch
as the student, resized to its own input size and normalised by its own spec, so the student learns the
teacher's view of exactly the image it is trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mri44.errors import SettingError
from mri44.files import checkpoint_path, file_sha256
from mri44.model import load_checkpoint, model_from_checkpoint
from mri44.preprocess import PreprocessSpec
from mri44.torch_input import to_input


@dataclass(frozen=True)
class Teacher:
    model: torch.nn.Module
    spec: PreprocessSpec
    scale: torch.Tensor  # the teacher spec's normalisation, x * scale + bias
    bias: torch.Tensor
    description: str  # for the student's checkpoint: which teacher, by content
    num_classes: int

    @torch.no_grad()
    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a uint8-valued float batch (B, C, S, S) of the student's augmented pixels."""
        if raw.shape[-1] != self.spec.size:
            raw = F.interpolate(raw, size=(self.spec.size,) * 2, mode="bilinear", antialias=True)
        return self.model(to_input(raw, self.scale, self.bias)).float()


def load_teacher(
    source: Path, classes: list[str], student_spec: PreprocessSpec, device: torch.device
) -> Teacher:
    """A run folder or checkpoint as a frozen teacher; it must know the same classes and see the same pixels."""
    ckpt = load_checkpoint(source)
    if ckpt["classes"] != classes:
        raise SettingError(f"teacher {source} was trained on other classes than this data set")
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    if (spec.resize, spec.channels) != (student_spec.resize, student_spec.channels):
        raise SettingError(
            f"teacher {source} reads {spec.resize}/{spec.channels} input, the student {student_spec.resize}/"
            f"{student_spec.channels}: train both with the same --recipe resize and channels"
        )
    model = model_from_checkpoint(ckpt).to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    scale, bias = spec.scale_bias()
    path = checkpoint_path(source)
    return Teacher(
        model=model,
        spec=spec,
        scale=torch.as_tensor(scale, device=device),
        bias=torch.as_tensor(bias, device=device),
        description=f"{ckpt.get('arch')} {path} sha256 {file_sha256(path)}",
        num_classes=len(ckpt["classes"]),
    )


def distillation_loss(
    student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's soft-target loss, T^2 * KL(p_T || softmax(s/T)), batch mean, where p_T are the teacher's
    probabilities at temperature T (log_softmax(t / T) of an on-the-fly teacher, or stored soft labels)."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_student, teacher_log_probs, log_target=True, reduction="batchmean") * temperature**2
