"""What a batch will cost before it renders: predicted render time, wall time and price by backend."""

from .model import (
    BACKENDS,
    BUDGET_ENV,
    BUILT_IN,
    DEFAULT_MAX_BATCH_SECONDS,
    RENDER_VERSION,
    Coefficients,
    CostModel,
    Prediction,
    Prices,
    Sample,
    calibrated,
    fit,
    predict,
)

__all__ = [
    "BACKENDS",
    "BUDGET_ENV",
    "BUILT_IN",
    "DEFAULT_MAX_BATCH_SECONDS",
    "RENDER_VERSION",
    "Coefficients",
    "CostModel",
    "Prediction",
    "Prices",
    "Sample",
    "calibrated",
    "fit",
    "predict",
]
