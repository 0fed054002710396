"""Configuration, connections and the error tree of devmesh (the bottom layer).

Importing the package sets up OpenTelemetry traces when DEVMESH_TRACING__EXPORTER asks for them (blocks/tracing.py).
Every devmesh process imports it before its first flow run starts: the CLI, the gateway, `prefect serve`, and the
flow-run subprocesses of served deployments and workers (they load a flow file, which imports blocks).
"""

from blocks import tracing as _tracing

_tracing.configure()
