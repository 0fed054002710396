"""Configuration, connections and the error tree of devmesh (the bottom layer).

Importing the package sets up OpenTelemetry traces when DEVMESH_TRACING__EXPORTER asks for them (blocks/tracing.py);
a bad DEVMESH_TRACING__* setting leaves tracing off with one warning naming the variable, and never fails the import.
Every devmesh process imports it before its first flow run starts: the CLI, the gateway, `prefect serve`, and the
flow-run subprocesses of served deployments and workers (they load a flow file, which imports blocks).
"""

from blocks import tracing as _tracing

_tracing.configure_from_environment()
