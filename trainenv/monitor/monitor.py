"""The framework-free stability monitor: one telemetry row per update in, alarms out.

:class:`StabilityMonitor` keeps the last ``W`` rows of a run's telemetry, computes the
meta-state latent of that window with a :class:`~trainenv.core.metastate.MetaStateEncoder`,
and runs early-warning detectors on it — the same classes, inputs and threshold calibration as
trainenv's own early-warning evaluation (:data:`trainenv.warning.DETECTORS`):

==========================  ==================  ==========================================
detector                    input               needs
==========================  ==================  ==========================================
``meta-state deviation``    ``deviation``       an encoder with a reference band
``self-deviation``          ``latents``         an encoder (given, or fitted live)
``loss spike``              ``loss``            a loss channel
``grad-norm z-score``       ``grad_norm``       a ``grad_norm`` channel
``CUSUM (loss)``            ``loss``            a loss channel
==========================  ==================  ==========================================

Where the encoder comes from (see :mod:`trainenv.monitor.calibrate` for the limits):

- given, and its channels are among the run's: its latents, and the deviation from its band;
- none given, or none that fits the run: the *self-referenced* deviation only, on an encoder
  fitted live on the run's first ``calibration_updates`` updates.

Thresholds: each detector's is set to its score quantile ``1 - false_alarm_rate / n`` (``n``
chosen detectors, so the share of updates on which *any* detector alarms stays within
``false_alarm_rate`` on runs like the calibration material), either on the first
``calibration_updates`` updates of the run (no alarm before they are in) or on reference runs
(:meth:`StabilityMonitor.calibrate`) — but never below the detector's default threshold (the
practitioners' setting: ``LossSpike`` 0.5, ``GradNormZScore`` 3...), since a short calibration
stretch can put the quantile where any noise exceeds it (a falling loss never spikes).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainenv.core.deviation import Detector
from trainenv.core.metastate import MetaStateEncoder, window_features
from trainenv.monitor.calibrate import (
    detector_inputs,
    fit_live_encoder,
    held_out_deviation,
    reference_encoder,
)
from trainenv.warning.detectors import (
    Cusum,
    GradNormZScore,
    LossSpike,
    MetaStateDeviation,
    SelfDeviation,
    calibrate_threshold,
)

DETECTORS: dict[str, tuple[Callable[[], Detector], str]] = {
    "meta-state deviation": (MetaStateDeviation, "deviation"),
    "self-deviation": (SelfDeviation, "latents"),
    "loss spike": (LossSpike, "loss"),
    "grad-norm z-score": (GradNormZScore, "grad_norm"),
    "CUSUM (loss)": (Cusum, "loss"),
}
"""Name -> (factory, input): the table of :data:`trainenv.warning.DETECTORS` (a test keeps the
two equal; this module does not import the evaluation, which pulls in pandas and the audit)."""
DEFAULT_DETECTORS = ("self-deviation", "loss spike", "grad-norm z-score")
LOSS_CHANNELS = ("train_loss", "loss")  # the first a run has is "the loss", as in the traces


@dataclass(frozen=True)
class Alarm:
    """One detector's alarm on one update.

    Attributes:
        update: The run's update count when the alarm went off (1 = after the first update).
        detector: Its name in :data:`DETECTORS`.
        input: What it read (``"loss"``, ``"grad_norm"``, ``"latents"``, ``"deviation"``).
        score: The detector's score (``inf`` for a non-finite input).
        threshold: The threshold the score exceeded.
    """

    update: int
    detector: str
    input: str
    score: float
    threshold: float


class StabilityMonitor:
    """Streaming stability monitor for any training loop; see the module docstring.

    Args:
        channels: Telemetry channel names the rows carry (rows may hold more keys: ignored).
        encoder: A fitted meta-state encoder; used when its channels are among ``channels``.
        detectors: Names from :data:`DETECTORS`; default :data:`DEFAULT_DETECTORS`, plus
            ``meta-state deviation`` when the encoder has a band.
        loss_channel: The channel the loss detectors read; default the first of
            ``train_loss``, ``loss`` in ``channels``.
        window: Rows per meta-state window when the encoder is fitted live (a given encoder
            brings its own).
        calibration_updates: Updates at the start of the run that fit the live encoder and the
            thresholds (no alarm before); 0 to keep the thresholds given in ``thresholds`` or
            the detectors' defaults (then a live encoder cannot be fitted).
        false_alarm_rate: Target share of alarmed updates on calibration-like runs, in (0, 1).
        thresholds: ``{detector: threshold}`` set directly (skips their calibration).
    """

    def __init__(
        self,
        channels: Sequence[str],
        *,
        encoder: MetaStateEncoder | None = None,
        detectors: Sequence[str] | None = None,
        loss_channel: str | None = None,
        window: int = 16,
        calibration_updates: int = 64,
        false_alarm_rate: float = 0.01,
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        self.channels = tuple(str(c) for c in channels)
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must be distinct names, at least one; got {channels!r}")
        if window < 2:
            raise ValueError(f"window must be >= 2 rows, got {window}")
        if calibration_updates < 0:
            raise ValueError(f"calibration_updates must be >= 0, got {calibration_updates}")
        if not 0 < false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
        self.encoder: MetaStateEncoder | None = None
        self._columns: list[int] = []  # the encoder's channels among the rows' columns
        self._use(self._fitting(encoder))
        self.window = self.encoder.window if self.encoder is not None else int(window)
        self.loss_channel = loss_channel or next((c for c in LOSS_CHANNELS if c in channels), None)
        names = list(detectors) if detectors is not None else self._defaults()
        self._check_detectors(names, calibration_updates)
        self.detectors: dict[str, Detector] = {name: DETECTORS[name][0]() for name in names}
        self.calibration_updates = int(calibration_updates)
        self.false_alarm_rate = float(false_alarm_rate)
        self._calibrated = set(thresholds or ())
        for name, value in (thresholds or {}).items():
            if name not in self.detectors:
                raise ValueError(f"thresholds: {name!r} is not a chosen detector: {names}")
            self.detectors[name].threshold = float(value)
        self.updates = 0
        self._rows = np.zeros((0, len(self.channels)))
        self._calibration_rows: list[np.ndarray] = []
        self.latent: np.ndarray | None = None
        self.deviation: float | None = None
        self.scores: dict[str, float] = {}

    # -- public -----------------------------------------------------------------------------------
    @property
    def calibrating(self) -> bool:
        """Whether the next update is one of the first ``calibration_updates`` (no alarms)."""
        return (
            self.calibration_updates > 0
            and self.updates < self.calibration_updates
            and (self.encoder is None or len(self._calibrated) < len(self.detectors))
        )

    def observe(self, row: Mapping[str, float]) -> list[Alarm]:
        """Take the telemetry of one update (``{channel: value}``); return its alarms.

        A missing channel is a ``ValueError`` naming it; a non-finite value is kept (the
        detectors reading it alarm with score ``inf``).
        """
        try:
            values = np.fromiter((row[c] for c in self.channels), float, len(self.channels))
        except KeyError as missing:
            raise ValueError(
                f"row: channel {missing} is missing; channels: {self.channels}"
            ) from None
        calibrating = self.calibrating
        self.updates += 1
        self._rows = np.concatenate([self._rows[1 - self.window :], values[None]])
        if calibrating:
            self._calibration_rows.append(values)
            if self.updates == self.calibration_updates:
                self._calibrate_live()
            return []
        inputs = self._inputs()
        alarms = []
        for name, detector in self.detectors.items():
            score = detector.update(inputs[DETECTORS[name][1]])
            self.scores[name] = score
            if detector.alarm(score):
                alarms.append(Alarm(self.updates, name, DETECTORS[name][1], score,
                                    detector.threshold))  # fmt: skip
        return alarms

    def calibrate(self, reference_runs: Sequence[Sequence[Mapping[str, float]]]) -> None:
        """Fit on unperturbed reference runs of the user's recipe (each a sequence of rows).

        Without an encoder that fits, fits one on the runs' window features, with a reference
        band when there are >= 2 runs; then sets every detector's threshold on the runs'
        scores (:func:`~trainenv.warning.detectors.calibrate_threshold`), the band deviation's
        on each run's distance from a band fitted on the others when there are >= 3. The
        monitor then alarms from the first update of the monitored run; call before observing.
        """
        if self.updates:
            raise RuntimeError("calibrate() before the first observe(): the run has started")
        runs = [self._table(run, f"reference_runs[{i}]") for i, run in enumerate(reference_runs)]
        if not runs:
            raise ValueError("reference_runs must hold at least one run")
        if self.encoder is None:
            self._use(reference_encoder(self.channels, runs, self.window))
            self._enable_band_detector()
        self._set_thresholds(runs)
        self.reset_detectors()  # the monitored run is a new stream, not the last reference run
        self.latent = None

    def reset_detectors(self) -> None:
        """Forget the detectors' streams (thresholds stay): after a rollback, for instance."""
        for detector in self.detectors.values():
            detector.reset()

    # -- internals --------------------------------------------------------------------------------
    def _use(self, encoder: MetaStateEncoder | None) -> None:
        self.encoder = encoder
        self._columns = [self.channels.index(c) for c in encoder.channels] if encoder else []

    def _fitting(self, encoder: MetaStateEncoder | None) -> MetaStateEncoder | None:
        if encoder is None:
            return None
        missing = [c for c in encoder.channels if c not in self.channels]
        if missing:
            warnings.warn(
                f"StabilityMonitor: the encoder's channels {missing} are not in the run's "
                f"{list(self.channels)}; using the self-referenced deviation on a live encoder",
                UserWarning,
                stacklevel=3,
            )
            return None
        return encoder

    def _defaults(self) -> list[str]:
        names = [n for n in DEFAULT_DETECTORS if self._available(n)]
        if self.encoder is not None and self.encoder.band_ is not None:
            names.insert(0, "meta-state deviation")
        return names

    def _available(self, name: str) -> bool:
        need = DETECTORS[name][1]
        return (need != "loss" or self.loss_channel is not None) and (
            need != "grad_norm" or "grad_norm" in self.channels
        )

    def _check_detectors(self, names: list[str], calibration_updates: int) -> None:
        for name in names:
            if name not in DETECTORS:
                raise ValueError(f"detectors: unknown {name!r}; known: {list(DETECTORS)}")
            if not self._available(name):
                raise ValueError(
                    f"detectors: {name!r} reads {DETECTORS[name][1]!r}, which the channels "
                    f"{list(self.channels)} lack (loss_channel={self.loss_channel!r})"
                )
        if not names:
            raise ValueError("detectors: choose at least one")
        if "self-deviation" in names and self.encoder is None and calibration_updates < 2:
            raise ValueError(
                "calibration_updates must be >= 2 to fit a live encoder for 'self-deviation' "
                "(or pass an encoder, or call calibrate() with reference runs)"
            )
        if "meta-state deviation" in names and (self.encoder is None or self.encoder.band_ is None):
            raise ValueError("'meta-state deviation' needs an encoder with a reference band")

    def _enable_band_detector(self) -> None:
        if self.encoder is not None and self.encoder.band_ is not None:
            self.detectors.setdefault("meta-state deviation", MetaStateDeviation())

    def _table(self, run: Sequence[Mapping[str, float]], field: str) -> np.ndarray:
        try:
            table = np.array([[row[c] for c in self.channels] for row in run], dtype=float)
        except KeyError as missing:
            raise ValueError(f"{field}: channel {missing} is missing from a row") from None
        if len(table) < 2:
            raise ValueError(f"{field}: needs >= 2 rows, got {len(table)}")
        return table

    def _calibrate_live(self) -> None:
        table = np.asarray(self._calibration_rows)
        self._calibration_rows = []
        if self.encoder is None and "self-deviation" in self.detectors:
            self._use(fit_live_encoder(self.channels, table, self.window))
        self._set_thresholds([table])

    def _set_thresholds(self, runs: list[np.ndarray]) -> None:
        """Calibrate every detector not set by hand on ``runs``; leave each one's stream at
        the end of the last run (the live calibration segment is the run's own past)."""
        encoder, loss = self.encoder, self.loss_channel
        per_run = [detector_inputs(run, encoder, self.channels, loss) for run in runs]
        if encoder is not None and encoder.band_ is not None and len(runs) >= 3:
            for inputs, held_out in zip(per_run, held_out_deviation(encoder, runs, self._columns)):
                inputs["deviation"] = held_out
        rate = self.false_alarm_rate / len(self.detectors)
        for name, detector in self.detectors.items():
            key = DETECTORS[name][1]
            if name in self._calibrated:
                detector.scores(per_run[-1][key])
            else:
                series = [inputs[key] for inputs in per_run]
                calibrated = calibrate_threshold(detector, series, rate)
                # Never below the detector's default: a short calibration (a falling loss scores
                # <= 0 on every update) would otherwise set a threshold that any noise exceeds.
                detector.threshold = max(calibrated, DETECTORS[name][0]().threshold)
                detector.scores(per_run[-1][key])
                self._calibrated.add(name)
        if self.encoder is not None:
            self.latent = self.encoder.encode(runs[-1][:, self._columns])

    def _inputs(self) -> dict[str, Any]:
        row = self._rows[-1]
        inputs: dict[str, Any] = {}
        if self.loss_channel is not None:
            inputs["loss"] = float(row[self.channels.index(self.loss_channel)])
        if "grad_norm" in self.channels:
            inputs["grad_norm"] = float(row[self.channels.index("grad_norm")])
        if self.encoder is not None:
            self.latent = self.encoder.transform(window_features(self._rows[:, self._columns]))
            inputs["latents"] = self.latent
            band = self.encoder.band_
            self.deviation = band.distance(self.latent, self.updates) if band else None
            inputs["deviation"] = self.deviation
        return inputs


def alarm_rate(alarms: Sequence[Alarm], updates: int) -> float:
    """Share of ``updates`` updates with at least one of ``alarms``."""
    if updates < 1:
        raise ValueError(f"updates must be >= 1, got {updates}")
    return len({alarm.update for alarm in alarms}) / updates
