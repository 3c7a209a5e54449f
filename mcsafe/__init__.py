"""mcsafe: a machine-check-safe copy for Python, recovered through compiled exception tables."""
