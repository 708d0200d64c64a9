"""A Jinja extension that tells the hooks where this template is on disk.

cookiecutter hands hooks `_repo_dir` as it was typed, which is relative for a
local template, and runs them in the new service's directory; this module is
imported while the template is on sys.path, so its own location is the answer.
"""

from pathlib import Path

from jinja2.ext import Extension

TEMPLATE_DIR = Path(__file__).resolve().parent.parent


class TemplateDirExtension(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        environment.globals["template_dir"] = str(TEMPLATE_DIR)
