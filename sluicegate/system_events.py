"""Names of the events the engine itself sends (reference §1): functions may be triggered by
them, and ``step.wait_for_event`` may wait for them; senders may not use the prefix."""

FINISHED_EVENT = "sluicegate/function.finished"    # every ended run (see run_decisions.end_events)
FAILED_EVENT = "sluicegate/function.failed"        # a failed run (on_failure handlers)
CANCELLED_EVENT = "sluicegate/function.cancelled"  # a cancelled run (on_cancel handlers)
INVOKED_EVENT = "sluicegate/function.invoked"      # step.invoke: starts exactly the named function
SKIPPED_EVENT = "sluicegate/run.skipped"           # a run flow control did not admit (run_decisions.skip_notice)
END_EVENTS = (FINISHED_EVENT, FAILED_EVENT, CANCELLED_EVENT)
