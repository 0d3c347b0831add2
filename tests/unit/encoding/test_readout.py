"""fit_readout against scikit-learn: the penalty by GridSearchCV on the same folds, the weights by Ridge."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV

from bids_dnn.encoding import fit_readout, inner_folds_for


@pytest.mark.parametrize("n_features", [7, 300])  # primal-sized and kernel-sized problems
def test_readout_equals_sklearn(n_features: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, n_features))
    y = x[:, :3] @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=40)
    alphas = [0.1, 3.0, 100.0, 5000.0]
    readout = fit_readout(x, y, alphas, inner_folds=4, seed=11)
    folds = inner_folds_for(np.arange(40), inner_folds=4, seed=11, outer_fold=0)
    search = GridSearchCV(Ridge(), {"alpha": alphas[::-1]}, cv=folds, scoring="neg_mean_squared_error").fit(x, y)
    assert readout.alpha == search.best_params_["alpha"]
    np.testing.assert_allclose(readout.cv_mse[::-1], -search.cv_results_["mean_test_score"], rtol=1e-8)
    reference = Ridge(alpha=readout.alpha).fit(x, y)
    np.testing.assert_allclose(readout.weights, reference.coef_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(readout.predict(x[:5]), reference.predict(x[:5]), rtol=1e-8)


def test_readout_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same number of samples"):
        fit_readout(np.zeros((5, 2)), np.zeros(4), [1.0])
    with pytest.raises(ValueError, match="finite"):
        fit_readout(np.full((5, 2), np.nan), np.zeros(5), [1.0])
