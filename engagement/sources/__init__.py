"""One module per platform: HTTP and parsing into plain dataclasses (sources/base.py), no ORM.

Each platform module exposes `build(config: SourceConfig, *, client: HttpClient, now, store: TokenStore)`
returning a Connector. The registry maps Platform values to those modules, imported when first used.
"""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import Callable

from .base import Connector, HttpClient, PermanentError, SourceConfig, TokenStore

MODULES = {
    "mastodon": "engagement.sources.mastodon",
    "bluesky": "engagement.sources.bluesky",
    "wordpress": "engagement.sources.wordpress",
    "feed": "engagement.sources.feed",
    "disqus": "engagement.sources.disqus",
    "youtube": "engagement.sources.youtube",
    "reddit": "engagement.sources.reddit",
    "hackernews": "engagement.sources.hackernews",
    "telegram": "engagement.sources.telegram",
}


def build_connector(config: SourceConfig, *, client: HttpClient, now: Callable[[], datetime],
                    store: TokenStore) -> Connector:
    module_name = MODULES.get(config.platform)
    if module_name is None:
        raise PermanentError(f"no connector for platform {config.platform!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise PermanentError(f"the {config.platform} connector is not available in this version") from None
    return module.build(config, client=client, now=now, store=store)
