"""The ``sluicegate`` command (filled in below)."""
def main() -> None:
    pass
