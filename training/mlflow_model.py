"""The MLflow pyfunc model, logged as code (no pickles): scores raw feature frames with the
bundle folder (``spec.json`` + LightGBM text files) logged next to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model

from training.scoring import Scorer


class NextbestModel(mlflow.pyfunc.PythonModel):
    """Churn risk, or p_treated/p_untreated/uplift per (customer features, offer, channel)."""

    def load_context(self, context: Any) -> None:
        self.scorer = Scorer.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return self.scorer.predict_frame(model_input)


set_model(NextbestModel())
