"""A Jinja extension that gives cookiecutter.json the facts derived from the options.

The rules live in hooks/options.py; cookiecutter.json renders each fact once into a
private variable (`__task_broker`), which every template and component reads.
"""

from jinja2.ext import Extension

from hooks.options import TASK_BROKER


def task_broker(tasks: str) -> str:
    """redis, database or none; an unknown queue is left to the pre-generation hook."""
    return TASK_BROKER.get(tasks, "unknown")


class FactsExtension(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        environment.globals["task_broker"] = task_broker
