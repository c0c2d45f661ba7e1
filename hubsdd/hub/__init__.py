"""Publish a release to the Hugging Face Hub and pull one back, verified.

``release`` reads and checks a release folder; ``auth`` finds the token(s); ``publish`` makes one
commit per repository; ``pull`` downloads and verifies; ``format`` says what happened. Every failure
surfaces as a :class:`~hubsdd.core.errors.HubsddError` subclass with a fix, never as a bare
``huggingface_hub`` traceback.
"""

from .auth import oidc_resource, repo_tokens, single_token
from .format import format_dry_run, format_publish, format_retention, format_summary
from .publish import PublishResult, RepoResult, publish, release_tag
from .pull import PullResult, parse_repo_ref, pull

__all__ = [
    "PublishResult", "PullResult", "RepoResult", "format_dry_run", "format_publish", "format_retention",
    "format_summary", "oidc_resource", "parse_repo_ref", "publish", "pull", "release_tag", "repo_tokens",
    "single_token",
]
