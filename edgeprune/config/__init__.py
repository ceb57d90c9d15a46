"""Loading and validation of targets/*.yaml and devices.yaml, with file:line errors."""
