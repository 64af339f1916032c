"""Limits from the reference (``shared/reference/inngest-semantics.md`` §0). Each has a test."""

KIB = 1024
MIB = 1024 * KIB

MAX_EVENT_BYTES = 512 * KIB          # OSS default event size (serialized event JSON)
ABSOLUTE_MAX_EVENT_BYTES = 3 * MIB   # a deployment may raise MAX_EVENT_BYTES up to this
MAX_EVENTS_PER_REQUEST = 5000
MAX_EVENT_NAME_LENGTH = 512          # at ingestion
MAX_TRIGGER_NAME_LENGTH = 255        # in a function's trigger
MAX_REQUEST_BYTES = 16 * MIB         # whole HTTP body for a list of events
MAX_STEP_OUTPUT_BYTES = 4 * MIB
MAX_RUN_STATE_BYTES = 32 * MIB
MAX_STEPS_PER_RUN = 1000
DEFAULT_RETRIES = 4                  # so 5 attempts
MAX_RETRIES = 20
MIN_RETRY_AFTER_MS = 1000
MAX_RETRY_AFTER_MS = 24 * 3600 * 1000
MAX_ID_LENGTH = 128                  # app ids, function ids, step ids (ours)
