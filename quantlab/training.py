"""The training loop shared by float training and quantization-aware fine-tuning.

Deterministic for a given seed, and the same bytes on any x86-64 CPU under the pinned arithmetic of
quantlab.compute: all randomness (initialisation, shuffling, flips) comes
from generators seeded here, data is read from in-memory tensors (no DataLoader worker processes), and
PyTorch is asked for deterministic kernels.

Distillation: with weight alpha > 0, a fine-tune (stage qat, `qat.distill`) learns from the trained float
model it starts from as well as from the labels (knowledge distillation, Hinton et al. 2015, arXiv:1503.02531,
section 2): the teacher is a frozen copy of that model, and the loss is

    (1 - alpha) CE(z, y) + alpha T^2 KL(softmax(t / T) || softmax(z / T))

with z the fake-quantized student's logits, t the teacher's, y the labels and T = TEMPERATURE; the soft term's
gradients shrink as 1 / T^2, and T^2 keeps them at the hard term's scale. alpha = 0 is the plain cross-entropy.
"""

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from quantlab.data import normalize
from quantlab.errors import UserError
from quantlab.evaluation import Split, predict
from quantlab.model import Net
from quantlab.statistics import accuracy

# A training loss: (the batch's normalized inputs, the model's logits, the labels) -> the loss to minimize
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(x: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of float training, and of a fine-tune without distillation: -mean log softmax(logits)[label]."""
    return F.cross_entropy(logits, labels)


# The distillation's temperature: softened targets that carry how the teacher ranks the wrong classes, the
# value commonly used for CIFAR-10 (Hinton et al. report T from 2 to 20 working)
TEMPERATURE = 4.0


def device(name: str) -> torch.device:
    """compute.device as torch's device: a choice, never "CUDA when available", so that a machine with a GPU
    does not quietly give other numbers."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("compute.device is cuda, but torch finds no CUDA device here: set compute.device: cpu")
    return torch.device(name)


def training_subset(split: Split, fraction: float, seed: int) -> Split:
    """All of `split`, or a seeded random `fraction` of it (in the original order)."""
    if fraction >= 1:
        return split
    count = max(1, round(fraction * len(split)))
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return Split(split.x[index.to(split.x.device)], split.y[index.to(split.y.device)])


def make_deterministic(seed: int) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over `images`: every batch full but the last."""
    return -(-images // batch_size)


def fit(model: torch.nn.Module, train: Split, test: Split, *, epochs: int, batch_size: int, lr: float,
        weight_decay: float, flip: bool, seed: int, desc: str, log_every: int = 0,
        criterion: Criterion = cross_entropy) -> list[dict]:
    """Train with AdamW and a one-cycle learning-rate schedule, minimizing `criterion`. The history has a row
    per epoch with the epoch's mean loss, train and test accuracy; with `log_every`, also a row every that
    many steps with the mean loss and train accuracy since the last row (no test accuracy)."""
    generator = torch.Generator(device=train.x.device).manual_seed(seed)
    per_epoch = steps_per_epoch(len(train), batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * per_epoch)
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator, device=train.x.device)
        epoch_sums, interval_sums = [0.0, 0, 0], [0.0, 0, 0]  # loss * n, correct, n
        for start in tqdm(range(0, len(train), batch_size), desc=f"{desc} epoch {epoch}/{epochs}", unit="batch",
                          leave=False, mininterval=1.0):
            index = order[start:start + batch_size]
            x = normalize(train.x[index])
            if flip:
                mirrored = torch.rand(len(index), generator=generator, device=x.device) < 0.5
                x = torch.where(mirrored[:, None, None, None], x.flip(3), x)
            y = train.y[index]
            logits = model(x)
            loss = criterion(x, logits, y)
            if not torch.isfinite(loss):
                raise UserError(f"{desc}: training diverged (the loss is {loss.item()} at epoch {epoch}, step "
                                f"{step + 1}); lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            batch = (loss.item() * len(index), (logits.argmax(1) == y).sum().item(), len(index))
            for sums in (epoch_sums, interval_sums):
                for i, value in enumerate(batch):
                    sums[i] += value
            if log_every and step % log_every == 0 and step % per_epoch:
                history.append(_row(epoch - 1 + (start + len(index)) / len(train), step, interval_sums))
                interval_sums = [0.0, 0, 0]
        model.eval()
        row = {**_row(epoch, step, epoch_sums), "test_accuracy": accuracy(predict(model, test), test.y)}
        print(f"{desc} epoch {epoch}/{epochs}: loss {row['loss']:.4f}, train {row['train_accuracy']:.2f} %, "
              f"test {row['test_accuracy']:.2f} %", flush=True)
        history.append(row)
    return history


def _row(epoch: float, step: int, sums: list) -> dict:
    loss_sum, correct, count = sums
    return {"epoch": epoch, "step": step, "loss": loss_sum / count, "train_accuracy": 100.0 * correct / count}


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float,
                      temperature: float = TEMPERATURE) -> torch.Tensor:
    """(1 - alpha) CE(z, y) + alpha T^2 KL(softmax(t / T) || softmax(z / T)), the batch's mean (Hinton et al.
    2015): z = `logits`, t = `teacher_logits`, y = `labels`, T = `temperature`."""
    hard = F.cross_entropy(logits, labels)
    soft = F.kl_div(F.log_softmax(logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                    reduction="batchmean", log_target=True)
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


def distillation(teacher: Net, alpha: float) -> Criterion:
    """The training loss that distills `teacher` with weight `alpha` (quantlab.training.fit's criterion); the
    teacher is frozen: evaluation mode, no gradient."""
    teacher.eval().requires_grad_(False)

    def criterion(x: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)
        return distillation_loss(logits, teacher_logits, labels, alpha)

    return criterion
