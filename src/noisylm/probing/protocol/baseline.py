"""The reference row of the main table: a scikit-learn logistic regression on the same features.

Features standardised with the training split's mean and std (a linear map, so still a linear head;
it makes one C grid fit features of any scale), then `LogisticRegression` (L-BFGS, multinomial,
L2 penalty) fitted on the train split for every C of the grid; the C with the best validation
accuracy (ties: the smaller C) is fitted again and scored on test. Deterministic: no seed.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from noisylm.probing.protocol.data import ProbeData

LOGREG_LABEL = "logistic regression (C on val)"
MAX_ITER = 1000


@dataclass(frozen=True)
class LogRegSpec:
    """One logistic-regression fit: its inverse regularisation strength C."""

    C: float


def fit_logistic_regression(data: ProbeData, C: float) -> Any:
    """A `Pipeline(StandardScaler, LogisticRegression(C))` fitted on the train split, with BLAS
    limited to torch's thread count (the probe's ``threads``), so that ``jobs`` changes no number."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    features, labels = data.splits["train"]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER))
    with threadpool_limits(limits=torch.get_num_threads()), warnings.catch_warnings():
        # Recorded instead (`converged`): a strongly regularised or separable fit may stop at max_iter.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features.double().numpy(), labels.numpy())
    return model


def logreg_accuracy(model: Any, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows the fitted model labels correctly."""
    predictions = model.predict(features.double().numpy())
    return float(np.mean(predictions == labels.numpy()))


def logreg_record(data: ProbeData, spec: LogRegSpec, ids: dict[str, Any], *, test: bool) -> dict[str, Any]:
    """Fit at ``spec.C`` and return the run's record: ``ids`` + val accuracy (+ test unless ``test`` is
    False: selection never sees it), iterations, convergence, seconds."""
    started = time.perf_counter()
    model = fit_logistic_regression(data, spec.C)
    n_iter = int(np.max(model[-1].n_iter_))
    record = {
        **ids,
        "n_iter": n_iter,
        "converged": n_iter < MAX_ITER,
        "val_acc": logreg_accuracy(model, *data.splits["val"]),
    }
    if test:
        record["test_acc"] = logreg_accuracy(model, *data.splits["test"])
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record
