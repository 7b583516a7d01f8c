"""What Django's debug page and error reports show of the settings."""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# scheme://user:password@host: the password of a service's URL, up to the last @ before the
# host, as URL parsers read it (an @ of the password left unencoded included).
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/:@\s]*:)[^/\s]*(?=@[^@/\s]*)", re.I)


class ReporterFilter(SafeExceptionReporterFilter):
    """Django's, which hides settings by name (PASSWORD, KEY, TOKEN...), and the passwords
    inside URLs besides: DATABASE_URL, REDIS_URL, CELERY_BROKER_URL and the cache's LOCATION
    were shown whole on the debug page, which DEBUG=1 gives anyone who sends a request under
    a host name not allowed."""

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        if type(cleansed) is str:  # not a lazy object that passes for one
            return _URL_PASSWORD.sub(rf"\g<head>{self.cleansed_substitute}", cleansed)
        return cleansed
