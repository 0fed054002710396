"""Kubernetes operations through the official client: apply (server-side), scale, rollout_status, rollback, get.

Idempotency: server-side apply and setting replicas are idempotent by nature: the same request again leaves the
same object and changes nothing, not even its resourceVersion. Apply and rollback record the key in the
annotation `devmesh.dev/idempotency-key`; a rollback whose key is already recorded does not act again (a second
"undo" would otherwise flip back).

Kinds: Deployment (apps/v1), ConfigMap and Service (v1) are known; any other kind is accepted when the server's
discovery of its apiVersion lists it (custom resources included), else InputError. Secrets are refused: their
data would reach plans, diffs and the audit trail.

One module per operation family, each holding its inputs and the plan / run / verify / facts functions of the
contract in tasks/ops/base.py (`Operation`), and registering its operations when imported:

    client.py   KubeClient: the connection's ApiClient, failures mapped once (map_kube_errors)
    objects.py  Target and locate (where an object lives), what an object holds, diffs, policy facts
    apply.py    kubernetes.apply
    rollout.py  kubernetes.rollout_status, kubernetes.rollback (and the rollout helpers apply's verify uses)
    scale.py    kubernetes.scale
    get.py      kubernetes.get
"""

from tasks.ops.kubernetes.apply import ApplyInput
from tasks.ops.kubernetes.get import GetInput
from tasks.ops.kubernetes.objects import KEY_ANNOTATION
from tasks.ops.kubernetes.rollout import RollbackInput, RolloutStatusInput
from tasks.ops.kubernetes.scale import SCALE_ATTEMPTS, ScaleInput

__all__ = ["ApplyInput", "GetInput", "KEY_ANNOTATION", "RollbackInput", "RolloutStatusInput", "SCALE_ATTEMPTS",
           "ScaleInput"]
