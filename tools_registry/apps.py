from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class ToolsRegistryConfig(AppConfig):
    name = "tools_registry"
    verbose_name = "Tools and agents"

    def ready(self) -> None:
        from tools_registry.upstreams import secrets

        # Each app declares its tools in a `tools` module; importing it registers them.
        autodiscover_modules("tools")
        # Every process refuses to start on upstream keys it cannot use.
        secrets.check_keys()
