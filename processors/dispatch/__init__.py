"""The dispatcher's pure decisions (issue 4): fair selection among ready backlogs, keyed
concurrency slots with leases, and throttle. Not wired into the processor yet."""
