"""Everything that accepts events: the HTTP webhook bridge, event keys, and the runs API."""
