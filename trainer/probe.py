"""Linear probes: how much of a label a fixed set of features carries, read by the simplest reader
there is. Multinomial logistic regression on standardised features, fitted to convergence (L-BFGS,
a small L2 penalty so separable data still has a finite answer); deterministic for given inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

L2 = 1e-3  # per-weight penalty, relative to the mean cross-entropy
MAX_ITERATIONS = 500


@dataclass(frozen=True)
class ProbeScore:
    accuracy: float  # on the test features
    chance: float  # the test set's most frequent label's share: what a probe that learned nothing scores
    train_accuracy: float
    n_train: int
    n_test: int
    classes: int


def fit_probe(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str]) -> ProbeScore:
    """Fit on (train_x, train_y), score on (test_x, test_y); labels the train set never shows count as wrong."""
    classes = sorted(set(train_y))
    index = {label: i for i, label in enumerate(classes)}
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.from_numpy(((train_x - mean) / std).astype(np.float32))
    y = torch.tensor([index[label] for label in train_y])
    weight = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=MAX_ITERATIONS, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + L2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    with torch.no_grad():
        predict = lambda features: (torch.from_numpy(((features - mean) / std).astype(np.float32))  # noqa: E731
                                    @ weight + bias).argmax(1).numpy()
        train_hits = predict(train_x) == y.numpy()
        test_hits = predict(test_x) == np.array([index.get(label, -1) for label in test_y])
    _, counts = np.unique(test_y, return_counts=True)
    return ProbeScore(float(test_hits.mean()), float(counts.max() / counts.sum()), float(train_hits.mean()),
                      len(train_y), len(test_y), len(classes))
