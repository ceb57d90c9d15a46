"""Loading and validation of target YAML files (shipped in edgeprune/targets/, or the user's
./targets and $EDGEPRUNE_TARGETS_DIR) and devices.yaml, with file:line errors."""
