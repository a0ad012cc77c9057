"""Knowledge distillation: a trained teacher's softened outputs as a second training target.

The teacher (in practice the ImageNet-initialised ResNet-50 fine-tuned on our data) sees the same augmented batch
as the student, resized to its own input size and normalised by its own spec, so the student learns the
teacher's view of exactly the image it is trained on. A teacher is a run folder, a checkpoint or a shipped ONNX
model (its metadata carries the classes and preprocessing), so a student can learn from models/mri44-resnet50.onnx
without the teacher's run folder. Several teachers make an ensemble: the geometric mean of their probabilities
(averaging two shipped models gained 1.8 points of accuracy on the project owners' held-out set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mri44.checkpoint import Checkpoint
from mri44.errors import SettingError
from mri44.files import checkpoint_path, file_sha256
from mri44.onnx_meta import INPUT_NAME, OUTPUT_NAME, read_metadata
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


class OnnxTeacher(torch.nn.Module):
    """An exported model (ONNX Runtime on the CPU) behind the torch call the teacher code makes: normalised float
    batch in, float32 logits out on the batch's device. It has no parameters; its fp16 weights give soft labels
    within the export's parity gate of the checkpoint it came from."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from mri44.runtime import make_session  # onnxruntime only when an ONNX teacher is asked for

        self.session = make_session(path, "cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().float().cpu().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return torch.from_numpy(logits).to(x.device)


def _teacher_source(
    source: Path, device: torch.device
) -> tuple[torch.nn.Module, list[str], PreprocessSpec, str]:
    """(frozen model, classes, preprocess dict, arch) of a run folder, checkpoint or ONNX model."""
    path = checkpoint_path(source)
    if path.suffix.lower() == ".onnx":
        meta = read_metadata(path)
        return OnnxTeacher(path), meta.classes, meta.preprocess, meta.arch
    ckpt = Checkpoint.load(source)
    model = ckpt.model().to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, ckpt.classes, ckpt.preprocess, ckpt.arch


def load_teacher(
    source: Path, classes: list[str], student_spec: PreprocessSpec, device: torch.device
) -> Teacher:
    """A run folder, checkpoint or ONNX model as a frozen teacher; it must know the same classes and see the same
    pixels."""
    model, teacher_classes, spec, arch = _teacher_source(source, device)
    if teacher_classes != classes:
        raise SettingError(f"teacher {source} was trained on other classes than this data set")
    if (spec.resize, spec.channels) != (student_spec.resize, student_spec.channels):
        raise SettingError(
            f"teacher {source} reads {spec.resize}/{spec.channels} input, the student {student_spec.resize}/"
            f"{student_spec.channels}: train both with the same --recipe resize and channels"
        )
    scale, bias = spec.scale_bias()
    path = checkpoint_path(source)
    return Teacher(
        model=model,
        spec=spec,
        scale=torch.as_tensor(scale, device=device),
        bias=torch.as_tensor(bias, device=device),
        description=f"{arch} {path} sha256 {file_sha256(path)}",
        num_classes=len(teacher_classes),
    )


@torch.no_grad()
def ensemble_logits(teachers: Sequence[Teacher], raw: torch.Tensor) -> torch.Tensor:
    """One teacher's logits; for several, the mean of their log-probabilities, whose softmax at any distillation
    temperature T is the normalised geometric mean of the members' probabilities at T."""
    if len(teachers) == 1:
        return teachers[0].logits(raw)
    return torch.stack([F.log_softmax(teacher.logits(raw).float(), 1) for teacher in teachers]).mean(0)


def ensemble_description(teachers: Sequence[Teacher]) -> str:
    """Which teacher or teachers, by content: recorded in the soft-label file and the student's checkpoint."""
    if len(teachers) == 1:
        return teachers[0].description
    return "geometric mean of " + " + ".join(teacher.description for teacher in teachers)


def mix_log_probs(log_p: torch.Tensor, log_q: torch.Tensor, lam: float) -> torch.Tensor:
    """log(lam * p + (1 - lam) * q) from log-probabilities: the soft label of a mixup view when the teacher's labels
    were stored per view (train/soft_labels.py) and it cannot see the mixed image itself."""
    weights = torch.log(torch.tensor([lam, 1.0 - lam], dtype=log_p.dtype, device=log_p.device))
    return torch.logaddexp(log_p + weights[0], log_q + weights[1])


def distillation_loss(
    student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's soft-target loss, T^2 * KL(p_T || softmax(s/T)), batch mean, where p_T are the teacher's
    probabilities at temperature T (log_softmax(t / T) of an on-the-fly teacher, or stored soft labels)."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_student, teacher_log_probs, log_target=True, reduction="batchmean") * temperature**2
