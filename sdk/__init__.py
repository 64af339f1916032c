"""What users import: ``from sluicegate.sdk import Sluicegate, Context, Step, ...``."""

from .client import Sluicegate
from .errors import NonRetriableError, RetryAfterError, StepError
from .function import (Batch, Concurrency, Debounce, Fairness, Function, FunctionConfig, Priority, RateLimit, Retries,
                       Singleton, Throttle, TriggerCron, TriggerEvent)
from .step import Context, Step

__all__ = [
    "Batch", "Concurrency", "Context", "Debounce", "Fairness", "Function", "FunctionConfig", "NonRetriableError",
    "Priority", "RateLimit", "Retries", "RetryAfterError", "Singleton", "Sluicegate", "Step", "StepError", "Throttle",
    "TriggerCron", "TriggerEvent",
]
