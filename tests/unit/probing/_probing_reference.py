"""Independent references for the probe tests: scikit-learn's GridSearchCV on the same folds."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.model_selection import GridSearchCV

from bids_dnn.encoding import inner_folds_for


def sklearn_probe(patterns, labels, folds, alphas, *, inner_folds, seed, standardize=False):
    """Out-of-fold predictions and chosen alphas of GridSearchCV per outer fold.

    ``labels``: class label strings (object array, categorical) or floats (continuous). Alphas are
    passed in descending order so that GridSearchCV's "first best" is the larger alpha on ties.
    Standardising uses the outer training mean / SD (constant columns SD 1), as the probe does.
    """
    labels = np.asarray(labels)
    categorical = labels.dtype.kind in "OUS"
    predictions = np.empty(len(labels), dtype=object) if categorical else np.full(len(labels), np.nan)
    chosen = []
    grid = {"alpha": np.sort(np.asarray(alphas, dtype=float))[::-1]}
    for k, (train, test) in enumerate(folds):
        x_train, x_test = patterns[train].astype(float), patterns[test].astype(float)
        if standardize:
            mean, sd = x_train.mean(0), x_train.std(0)
            sd = np.where(sd > 10 * np.finfo(float).eps * np.maximum(np.abs(mean), 1.0), sd, 1.0)
            x_train, x_test = (x_train - mean) / sd, (x_test - mean) / sd
        inner = inner_folds_for(np.asarray(train), inner_folds=inner_folds, seed=seed, outer_fold=k)
        if categorical:
            search = GridSearchCV(RidgeClassifier(), grid, cv=inner, scoring="balanced_accuracy")
        else:
            search = GridSearchCV(Ridge(), grid, cv=inner, scoring="neg_mean_squared_error")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # balanced accuracy warns on classes absent from a fold
            search.fit(x_train, labels[train])
        predictions[test] = search.predict(x_test)
        chosen.append(search.best_params_["alpha"])
    return predictions, np.asarray(chosen)


def fold_mean_r(targets, predictions, folds):
    """Mean over folds of the Pearson r within each test fold (NaN folds skipped)."""
    values = []
    for _, test in folds:
        if len(test) >= 2 and np.ptp(targets[test]) > 0 and np.ptp(predictions[test]) > 0:
            values.append(np.corrcoef(targets[test], predictions[test])[0, 1])
    return float(np.mean(values)) if values else float("nan")
