"""Workflow glue: the study config and its schemas, the runs it expands to, their
fingerprints."""
