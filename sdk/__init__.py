"""What users import: ``from sluicegate.sdk import Sluicegate, Context, Step, ...``."""

from .client import Sluicegate
from .errors import NonRetriableError, RetryAfterError, StepError
from ..lifecycle_config import Cancel, Timeouts
from .function import (Batch, Concurrency, Debounce, Exponential, Fairness, Fixed, Function, FunctionConfig, Priority,
                       RateLimit, Retries, Singleton, Throttle, TriggerCron, TriggerEvent)
from .step import Context, Step

__all__ = [
    "Batch", "Cancel", "Concurrency", "Context", "Debounce", "Exponential", "Fairness", "Fixed", "Function", "FunctionConfig",
    "NonRetriableError", "Priority", "RateLimit", "Retries", "RetryAfterError", "Singleton", "Sluicegate", "Step",
    "StepError", "Throttle", "Timeouts", "TriggerCron", "TriggerEvent",
]
