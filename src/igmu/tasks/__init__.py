"""CatIGMU tasks: the Task model (task.py) and the built-in mini-world tasks (mini.py)."""
from .task import Task, load_task, task_from_dict, task_to_yaml  # noqa: F401
