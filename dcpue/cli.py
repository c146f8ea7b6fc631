"""The ``dcpue`` command."""

def main() -> int:
    return 0
