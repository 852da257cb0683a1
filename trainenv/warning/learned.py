"""A learned early-warning baseline: logistic regression on telemetry window features.

The meta-state deviation is unsupervised: it is fitted on unperturbed runs and knows nothing
of collapses. A fair question is whether a plain supervised model on the same inputs does as
well. :class:`LogisticBaseline` is that model: scikit-learn's ``LogisticRegression`` (after a
``StandardScaler``, classes weighted to balance) on the window features of the same channels,
trained to predict the label the AUROC scores ("collapse onset within ``H`` steps",
:meth:`~trainenv.warning.simulation.Trace.labelled_steps`) on the samples the AUROC uses.

It is only ever trained on runs of other seeds than those it scores: the evaluation
cross-fits it by seed (:func:`~trainenv.warning.evaluation.evaluate_detectors`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trainenv.warning.simulation import Trace

__all__ = ["LogisticBaseline", "Scorer"]

Scorer = Callable[[Trace], np.ndarray]
"""Scores every step of a trace, shape ``(T,)``, higher meaning more alarming."""


class LogisticBaseline:
    """Logistic regression on one ``(T, F)`` trace input, per step.

    Args:
        input: The :class:`~trainenv.warning.simulation.Trace` input it reads (default: the
            leak-free meta-state's window features).
        c: Inverse L2 regularisation strength (scikit-learn's ``C``), > 0.
    """

    def __init__(self, input: str = "features_leak_free", c: float = 1.0) -> None:
        if not c > 0:
            raise ValueError(f"c must be > 0, got {c}")
        self.input, self.c = input, float(c)

    def fit(self, traces: Sequence[Trace], horizon: int) -> Scorer:
        """Train on ``traces``' labelled steps for ``horizon``; the scorer (the decision
        function, log-odds, at every step). With one class only in the labels there is nothing
        to learn: the scorer gives 0 everywhere (it never alarms above a threshold of 0)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        xs, ys = [], []
        for trace in traces:
            first, last, labels = trace.labelled_steps(horizon)
            xs.append(trace.inputs[self.input][first:last])
            ys.append(labels)
        x, y = np.concatenate(xs), np.concatenate(ys)
        if len(np.unique(y)) < 2:
            return lambda trace: np.zeros(len(trace.p))
        model = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000),
        ).fit(x, y)
        return lambda trace: np.asarray(model.decision_function(trace.inputs[self.input]))
