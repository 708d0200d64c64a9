"""MIDDLEWARE's type: a list in which a class's dotted path also finds its
subclasses.

Django's deploy checks look for its stock security, clickjacking and CSRF
middleware by dotted path (`path in settings.MIDDLEWARE`): security.W001-W003
when one is missing, and the checks of every setting those classes read
(HSTS, SSL redirect, X-Frame-Options, secure CSRF cookie) only when it is
there. The service installs subclasses that run in the event loop
(core.middleware), so with a plain list Django would warn that the middleware is
missing and skip the checks of its settings. With this one, Django's checks run
as written and see the subclasses: none of them needs silencing. A plain list
put in its place fails loudly (security.W001-W003), never silently.
"""

import inspect

from django.utils.module_loading import import_string


class MiddlewarePaths(list):
    def __contains__(self, path: object) -> bool:
        if super().__contains__(path):
            return True
        if not isinstance(path, str):
            return False
        try:
            wanted = import_string(path)
        except ImportError:
            return False
        # Imported here, not when settings load: the middleware modules read settings.
        return inspect.isclass(wanted) and any(
            inspect.isclass(installed) and issubclass(installed, wanted)
            for installed in map(import_string, self)
        )
