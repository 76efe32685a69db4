"""CatIGMU tasks: the Task model (task.py) and the built-in mini-world tasks (mini.py)."""
from .task import Task, task_from_dict, task_from_file, task_to_yaml  # noqa: F401


def load_task(spec: str) -> Task:
    """A task from a YAML/JSON file, or a built-in mini-world task 'mini:<name>' (e.g. mini:style-striped)."""
    if spec.startswith("mini:"):
        from .mini import mini_task

        return mini_task(spec.split(":", 1)[1])
    return task_from_file(spec)
