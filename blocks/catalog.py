"""Every devmesh block type in one module, so that one command registers them all with a Prefect server (the UI's
block catalog then offers each: GitHub, Kubernetes, embedders, chat models, policy, webhook, database):

    prefect block register -m blocks.catalog

`devmesh up` runs that command against the server it starts. AWS credentials are prefect-aws's AwsCredentials
(`prefect block register -m prefect_aws`), the context encryption key a Prefect Secret block (built in).
"""

from blocks.embedders.bedrock import BedrockEmbedder
from blocks.embedders.local import LocalEmbedder
from blocks.embedders.openai import OpenAIEmbedder
from blocks.embedders.voyage import VoyageEmbedder
from blocks.github import GitHubConnection
from blocks.kubernetes import KubernetesConnection
from blocks.llm import AnthropicChat, OpenAIChat
from blocks.policy import OperationPolicy
from blocks.postgres import PgVectorStore
from blocks.webhooks import GitHubWebhook

__all__ = ["BLOCK_TYPES", "AnthropicChat", "BedrockEmbedder", "GitHubConnection", "GitHubWebhook",
           "KubernetesConnection", "LocalEmbedder", "OpenAIChat", "OpenAIEmbedder", "OperationPolicy",
           "PgVectorStore", "VoyageEmbedder"]

BLOCK_TYPES = (GitHubConnection, KubernetesConnection, OpenAIEmbedder, VoyageEmbedder, BedrockEmbedder,
               LocalEmbedder, OpenAIChat, AnthropicChat, OperationPolicy, GitHubWebhook, PgVectorStore)
