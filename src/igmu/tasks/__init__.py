"""CatIGMU tasks: the Task model and task sources (task.py), the taxonomy (catigmu.py), the planner (planner.py),
prompt text helpers (prompts.py). World plug-ins register their task sources (the mini world: mini:<name>)."""
from . import released as _released
from .task import SOURCES, Task, register_source, task_from_dict, task_from_file, task_sources, task_to_yaml  # noqa: F401

register_source("igmu", _released._source, _released._names)  # IGMU's released prompt files: igmu:nudity


def load_task(spec: str) -> Task:
    """A task from a YAML/JSON file, or from a registered source 'PREFIX:NAME' (the mini world's:
    mini:style-striped)."""
    if not isinstance(spec, str) or not spec.strip():
        from ..errors import UserError

        raise UserError("empty --task; give a task YAML file or a registered source's PREFIX:NAME "
                        "(e.g. mini:style-striped)")
    prefix, sep, name = spec.partition(":")
    if sep and prefix in task_sources():
        return SOURCES[prefix][0](name)
    return task_from_file(spec)
