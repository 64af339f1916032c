"""What users import: ``from sluicegate.sdk import Sluicegate, Context, Step, ...``."""

from .client import Sluicegate
from .errors import NonRetriableError, RetryAfterError, StepError
from .function import Function, FunctionConfig, Retries, TriggerEvent
from .step import Context, Step

__all__ = [
    "Context", "Function", "FunctionConfig", "NonRetriableError", "Retries", "RetryAfterError",
    "Sluicegate", "Step", "StepError", "TriggerEvent",
]
