"""Where rank 0 sends per-step metrics: the run's MLflow record. Picklable; connects on first use."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class MlflowSink:
    tracking_uri: str
    run_id: str
    _client: object = field(default=None, repr=False, compare=False)
    _failed: bool = field(default=False, repr=False, compare=False)

    def __getstate__(self):
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "_client": None, "_failed": False}

    def log(self, metrics: dict, step: int) -> None:
        """Log finite numbers at `step`. A tracking outage must not stop training: warn once, go on."""
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)]
        try:
            if self._client is None:
                self._client = MlflowClient(self.tracking_uri)
            self._client.log_batch(self.run_id, metrics=rows)
        except Exception as err:  # any client or server error: training goes on, the checkpoint has the state
            if not self._failed:
                log.warning("cannot log metrics to MLflow (%s); training continues", str(err).splitlines()[0])
                self._failed = True
