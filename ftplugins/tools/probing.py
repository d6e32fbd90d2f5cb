"""Per-layer linear probes: how linearly decodable a property is from each layer's hidden states.

A probe is a logistic regression on one layer's pooled hidden state (mean over the real tokens of a text), fitted
on a seeded train split and scored by accuracy on the rest. scikit-learn's ``LogisticRegression`` (lbfgs, L2,
``C = 1``, on standardised features) fits it when scikit-learn is installed (``pip install 'ftplugins[analysis]'``);
otherwise the same model is fitted with torch's L-BFGS (:func:`fit_torch_probe`), so the analysis needs no extra.
Probes only read the model: features are computed under ``no_grad`` in eval mode and the model's training mode is
restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ftplugins.errors import FtpluginsError

BACKENDS = ("auto", "sklearn", "torch")


def layer_features(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
                   max_length: int = 256) -> torch.Tensor:
    """``(layers + 1, n, hidden)`` fp32: the embedding output and every layer's output, mean-pooled per text."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pooled = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                                  truncation=True, max_length=max_length).to(device)
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=True)
                mask = batch["attention_mask"].unsqueeze(-1).float()
                states = torch.stack([h.float() for h in out.hidden_states])  # (L+1, b, t, d)
                pooled.append(((states * mask).sum(2) / mask.sum(1).clamp(min=1)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(pooled, dim=1)


def split_indices(n: int, test_fraction: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded train/test split of ``range(n)``; both sides non-empty."""
    if n < 4:
        raise FtpluginsError(f"probing needs at least 4 labelled texts (a train and a test split), got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(n - 2, max(2, round(n * test_fraction)))
    return order[n_test:], order[:n_test]


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
                   backend: str = "auto", seed: int = 0) -> float:
    """Test accuracy of a logistic-regression probe fitted on ``features[train]``."""
    x_train, x_test = standardise(features[train], features[test])
    y_train, y_test = labels[train], labels[test]
    if len(torch.unique(y_train)) < 2:
        raise FtpluginsError("probing: the train split holds one label only; give the data at least two labels "
                             "with several texts each")
    if resolve_backend(backend) == "sklearn":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x_train.numpy(), y_train.numpy())
        predicted = torch.as_tensor(clf.predict(x_test.numpy()))
    else:
        predicted = fit_torch_probe(x_train, y_train).predict(x_test)
    return float((predicted == y_test).float().mean())


def layer_accuracies(features: torch.Tensor, labels: torch.Tensor, test_fraction: float = 0.3, seed: int = 0,
                     backend: str = "auto") -> list[float]:
    """Probe accuracy of every layer of ``features`` (as from :func:`layer_features`), one seeded split for all."""
    train, test = split_indices(features.shape[1], test_fraction, seed)
    return [probe_accuracy(layer, labels, train, test, backend, seed) for layer in features]


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and scale by the train split's statistics (constant features stay 0)."""
    mean, std = train.mean(0), train.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise FtpluginsError(f"probe backend {backend!r}: expected one of {BACKENDS}")
    if backend == "torch":
        return "torch"
    try:
        import sklearn  # noqa: F401
    except ImportError:
        if backend == "sklearn":
            raise FtpluginsError("probe backend 'sklearn' needs scikit-learn: pip install 'ftplugins[analysis]' "
                                 "(or use the torch backend)") from None
        return "torch"
    return "sklearn"


class TorchProbe:
    """Multinomial logistic regression, the model scikit-learn fits: weights ``(classes, d)`` and biases."""

    def __init__(self, classes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        self.classes, self.weight, self.bias = classes, weight, bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classes[(x @ self.weight.T + self.bias).argmax(1)]


def fit_torch_probe(x: torch.Tensor, y: torch.Tensor, c: float = 1.0, max_iter: int = 200) -> TorchProbe:
    """Fit with full-batch L-BFGS; the loss is scikit-learn's: ``sum CE + ||W||² / (2C)`` (biases unpenalised)."""
    classes, targets = torch.unique(y, return_inverse=True)
    x = x.double()
    weight = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-8, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, targets, reduction="sum")
        loss = loss + (weight ** 2).sum() / (2 * c)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return TorchProbe(classes, weight.detach().float(), bias.detach().float())
