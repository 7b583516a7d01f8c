from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class ToolsRegistryConfig(AppConfig):
    name = "tools_registry"
    verbose_name = "Tools and agents"

    def ready(self) -> None:
        # Each app declares its tools in a `tools` module; importing it registers them.
        autodiscover_modules("tools")
