"""DevOps operations (GitHub, Kubernetes, AWS); run them through the guard (`flows.operate`), never directly."""
