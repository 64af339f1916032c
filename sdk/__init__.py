"""What users import: ``from sluicegate.sdk import Sluicegate, Context, Step, ...``."""

from .client import Sluicegate
from .errors import NonRetriableError, RetryAfterError, StepError
from .function import (Batch, Debounce, Function, FunctionConfig, RateLimit, Retries, Singleton, TriggerCron,
                       TriggerEvent)
from .step import Context, Step

__all__ = [
    "Batch", "Context", "Debounce", "Function", "FunctionConfig", "NonRetriableError", "RateLimit", "Retries",
    "RetryAfterError", "Singleton", "Sluicegate", "Step", "StepError", "TriggerCron", "TriggerEvent",
]
