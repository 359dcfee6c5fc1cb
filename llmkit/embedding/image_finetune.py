"""`llmkit classify train PHOTOS/ --fine-tune`: fine-tune the last block of EfficientNet-Lite0
together with a linear head, on the frozen-encoder classifier's own split.

What is trained: the last MBConv block and the 1 × 1 head convolution after it (with its batch
norm's scale and shift), i.e. everything between the frozen trunk and the 1280-d pooled vector,
plus a linear head over the L2-normalised vector (the frozen classifier's input). Batch-norm
statistics stay frozen (eval mode): a few dozen photos cannot estimate them.

How: the head starts from the frozen-encoder logistic regression (its coefficients), so training
starts where the frozen classifier is and cross-entropy moves both the block and the head from
there, a few epochs at a small learning rate (AdamW). The trunk's output for every photo is
computed once and reused each epoch: only the tuned part runs forward and backward.

Saved next to the head (`classifier.safetensors`, the frozen format) as `encoder.safetensors`:
the tuned modules' tensors only, read back strictly (names and shapes) onto the packaged
weights by `FineTunedLite0`. Safetensors + JSON, nothing pickled.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from llmkit.embedding.choices import DEFAULT_IMAGE_MODEL
from llmkit.embedding.images import BATCH, ImageEncoder, load_lite0, to_tensor
from llmkit.errors import ClassifierError

ENCODER_WEIGHTS = "encoder.safetensors"
MODEL_NAME = f"{DEFAULT_IMAGE_MODEL}-fine-tuned"  # not a loadable name: an old reader fails loudly
EPOCHS = 8
LR_BLOCK = 1e-4
LR_HEAD = 1e-3
MINIBATCH = 8


def tuned_prefixes(net) -> tuple[str, ...]:
    return (f"_blocks.{len(net._blocks) - 1}.", "_conv_head.", "_bn1.")


def tuned_names(state: dict, prefixes: tuple[str, ...]) -> list[str]:
    """The tensors a fine-tune changes (batch-norm counters are not used in eval: left out)."""
    return [k for k in state if k.startswith(prefixes) and not k.endswith("num_batches_tracked")]


def _trunk(net, pixels: np.ndarray):
    """Frozen part: stem and every block but the last → feature maps (no gradients)."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), BATCH):
            x = to_tensor(pixels[i : i + BATCH])
            x = net._swish(net._bn0(net._conv_stem(x)))
            n = len(net._blocks)
            for idx, block in enumerate(net._blocks[:-1]):
                rate = net._global_params.drop_connect_rate
                x = block(x, drop_connect_rate=rate * idx / n if rate else rate)
            out.append(x)
    return torch.cat(out).clone()  # out of inference mode: usable in autograd


def _top(net, maps):
    """Tuned part: last block and head convolution → pooled, unit 1280-d vectors."""
    import torch

    n = len(net._blocks)
    rate = net._global_params.drop_connect_rate
    x = net._blocks[-1](maps, drop_connect_rate=rate * (n - 1) / n if rate else rate)
    x = net._swish(net._bn1(net._conv_head(x))).mean((2, 3))
    return torch.nn.functional.normalize(x, dim=1)


def _full_head(coef: np.ndarray, intercept: np.ndarray, n_classes: int):
    """sklearn's binary model (one row for classes[1]) as two softmax rows; K rows as they are."""
    if n_classes == 2 and coef.shape[0] == 1:
        return np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def fine_tune(
    pixels: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    *,
    epochs: int = EPOCHS,
    seed: int = 0,
) -> dict:
    """Fine-tune on pixels[train_idx] (labels y: class indices), starting from the frozen head
    (coef, intercept); → {coef, intercept (the classifier format), tensors (the tuned modules),
    predicted (class indices for test_idx), seconds, epochs, losses}."""
    import torch

    start = time.perf_counter()
    torch.manual_seed(seed)
    net = copy.deepcopy(load_lite0()).eval()  # the cached reference stays untouched
    prefixes = tuned_prefixes(net)
    tuned = []
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        if p.requires_grad:
            tuned.append(p)
    n_classes = int(y.max()) + 1
    w0, b0 = _full_head(np.asarray(coef, np.float32), np.asarray(intercept, np.float32), n_classes)
    head = torch.nn.Linear(w0.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.ascontiguousarray(w0)))
        head.bias.copy_(torch.from_numpy(np.ascontiguousarray(b0)))
    opt = torch.optim.AdamW(
        [{"params": tuned, "lr": LR_BLOCK}, {"params": head.parameters(), "lr": LR_HEAD}],
        weight_decay=0.0,
    )
    maps = _trunk(net, pixels)
    targets = torch.from_numpy(np.asarray(y, np.int64))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    tr = torch.from_numpy(np.asarray(train_idx, np.int64))
    for _ in range(epochs):
        total = 0.0
        for chunk in tr[torch.randperm(len(tr), generator=gen)].split(MINIBATCH):
            loss = torch.nn.functional.cross_entropy(head(_top(net, maps[chunk])), targets[chunk])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(chunk)
        losses.append(round(total / len(tr), 4))
    with torch.no_grad():
        predicted = head(_top(net, maps[torch.from_numpy(np.asarray(test_idx, np.int64))])).argmax(1)
    w = head.weight.detach().numpy()
    b = head.bias.detach().numpy()
    if n_classes == 2:  # back to the binary form classify.Classifier.proba reads: one logit
        w, b = (w[1] - w[0])[None], np.array([b[1] - b[0]])
    state = net.state_dict()
    tensors = {k: state[k].detach().numpy().copy() for k in tuned_names(state, prefixes)}
    return {
        "coef": w,
        "intercept": b,
        "tensors": tensors,
        "predicted": predicted.numpy(),
        "seconds": round(time.perf_counter() - start, 2),
        "epochs": epochs,
        "losses": losses,
        "trained": [p.rstrip(".") for p in prefixes],
    }


def settings() -> dict:
    return {"epochs": EPOCHS, "lr_block": LR_BLOCK, "lr_head": LR_HEAD, "minibatch": MINIBATCH}


class FineTunedLite0(ImageEncoder):
    """EfficientNet-Lite0 with a classifier dir's tuned modules loaded over the packaged weights,
    in torch fp32 (the exported fast paths are of the packaged weights only)."""

    def __init__(self, clf_dir: Path, normalize: bool = True):
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from llmkit.embedding.base import threads

        path = Path(clf_dir) / ENCODER_WEIGHTS
        bad = f"{clf_dir} looks tampered with or corrupt"
        hint = "retrain it with: llmkit classify train PHOTOS/ --fine-tune"
        try:
            tensors = load_file(str(path))
        except FileNotFoundError:
            raise ClassifierError(f"{clf_dir} is fine-tuned but has no {ENCODER_WEIGHTS}", hint) from None
        except (SafetensorError, OSError, ValueError) as exc:
            raise ClassifierError(f"{bad}: {ENCODER_WEIGHTS} is not a valid safetensors file", hint) from exc
        net = copy.deepcopy(load_lite0())
        state = net.state_dict()
        expected = set(tuned_names(state, tuned_prefixes(net)))
        wrong = sorted(k for k in expected | set(tensors) if k not in tensors or k not in expected)
        wrong += sorted(k for k in expected & set(tensors) if tensors[k].shape != state[k].shape)
        if wrong:
            raise ClassifierError(
                f"{bad}: {ENCODER_WEIGHTS} does not fit EfficientNet-Lite0 ({wrong[0]})", hint
            )
        net.load_state_dict({**state, **tensors}, strict=True)
        self.net = net.eval()
        self.normalize = normalize
        if torch.get_num_threads() > threads():
            torch.set_num_threads(threads())
        super().__init__(MODEL_NAME, 1280, "torch", "fp32")

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net.extract_features(to_tensor(pixels)).mean((2, 3)).numpy()
