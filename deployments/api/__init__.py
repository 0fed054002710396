"""The REST API under /api/v1 (mounted into the gateway app by `mount_api`; OpenAPI at /docs, /openapi.json).

    POST   /auth/register/organization          public, rate limited per client address
    POST   /keys  GET /keys  DELETE /keys/{id}  POST /keys/{id}/rotate              admin
    POST   /contexts  GET /contexts  GET|PATCH|DELETE /contexts/{id}                 write / read
    POST   /contexts/{id}/messages  POST /contexts/{id}/search
    GET    /contexts/{id}/summary|similar|embeddings
    POST   /embeddings  POST /search  POST /search/vector                            write / read
    GET    /tools  POST /tools/{name}/execute                                        read / operate
    GET    /operations/{id}  POST /operations/{id}/approve|reject  GET /audit        read / admin

Every request but registration carries an API key; every query is scoped by the key's tenant.
"""

from deployments.api.app import PREFIX, api_router, mount_api

__all__ = ["PREFIX", "api_router", "mount_api"]
