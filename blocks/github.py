"""GitHub REST credentials (a personal access token or a GitHub App installation) and a PyGithub client."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from blocks.errors import ConfigError

if TYPE_CHECKING:
    import github

__all__ = ["GitHubConnection", "PER_PAGE"]

PER_PAGE = 100  # items a list or search request asks for (GitHub's maximum): fewer round trips


class GitHubConnection(Block):
    """A connection to GitHub's REST API (github.com or GitHub Enterprise Server), used by devmesh's operations.

    Not prefect-github: that collection speaks GraphQL only, and only to github.com. The client made here does
    no retrying of its own (PyGithub's default GithubRetry also retries POST, which could open a second
    issue); devmesh's guard retries, and the operations are idempotent under an idempotency key.

    Args:
        base_url: The REST API root: https://api.github.com, or https://HOST/api/v3 for Enterprise Server.
        token: A personal access token (fine-grained or classic).
        app_id: A GitHub App's id, with `private_key` and `installation_id` (instead of `token`).
        private_key: The App's PEM private key.
        installation_id: The App installation to act as.
        timeout: Seconds to wait for one HTTP request.

    Example:
        Load a stored connection and read a repository:
        ```python
        from blocks.github import GitHubConnection

        connection = GitHubConnection.load("BLOCK_NAME")
        repo = connection.client().get_repo("octo/app")
        ```
    """

    _block_type_name: ClassVar[str] = "devmesh GitHub connection"
    _documentation_url: ClassVar[str] = "https://docs.github.com/en/rest"

    base_url: str = Field(
        default="https://api.github.com",
        description="The REST API root: https://api.github.com, or https://HOST/api/v3 for Enterprise Server.",
    )
    token: SecretStr | None = Field(default=None, description="A personal access token (fine-grained or classic).")
    app_id: int | None = Field(default=None, description="A GitHub App's id (with private_key and installation_id).")
    private_key: SecretStr | None = Field(default=None, description="The GitHub App's PEM private key.")
    installation_id: int | None = Field(default=None, description="The GitHub App installation to act as.")
    timeout: float = Field(
        default=15, gt=0, le=600, description="Seconds to wait for one HTTP request (rounded up to whole seconds)."
    )
    seconds_between_requests: float = Field(
        default=0.25, ge=0, description="Least pause between two requests (PyGithub's throttle; 0 turns it off)."
    )
    seconds_between_writes: float = Field(
        default=1.0, ge=0, description="Least pause between two writes, as GitHub asks of clients that create content."
    )

    def _auth(self) -> github.Auth.Auth:
        import github

        app_id, key, installation_id = self.app_id, self.private_key, self.installation_id
        has_app = (app_id, key, installation_id) != (None, None, None)
        if self.token is not None and has_app:
            raise ConfigError("GitHub connection: set either token or app_id/private_key/installation_id, not both")
        if self.token is not None:
            if not self.token.get_secret_value().strip():
                raise ConfigError("GitHub connection: token is empty")
            return github.Auth.Token(self.token.get_secret_value().strip())
        if not has_app:
            raise ConfigError("GitHub connection: no credentials; set token, or app_id, private_key, installation_id")
        if app_id is None or key is None or installation_id is None:
            raise ConfigError("GitHub connection: a GitHub App needs app_id, private_key and installation_id")
        # A key pasted into one line of an environment variable keeps its newlines as "\n".
        pem = key.get_secret_value().replace("\\n", "\n").strip()
        app = github.Auth.AppAuth(app_id, pem)
        try:
            app.create_jwt()  # signs locally: a bad key fails here, not as a provider error at the first request
        except Exception as exc:
            message = f"GitHub connection: private_key is not a usable RSA key ({type(exc).__name__})"
            raise ConfigError(message) from None
        return app.get_installation_auth(installation_id)

    def client(self) -> github.Github:
        """A PyGithub client with this connection's credentials; it never retries on its own (`retry=None`)."""
        import github

        return github.Github(
            auth=self._auth(),
            base_url=self.base_url.rstrip("/"),
            timeout=max(1, math.ceil(self.timeout)),  # PyGithub accepts whole seconds only
            retry=None,
            per_page=PER_PAGE,
            seconds_between_requests=self.seconds_between_requests,
            seconds_between_writes=self.seconds_between_writes,
            lazy=True,  # objects are fetched when read, not when named: no GET /repos before every POST
        )
