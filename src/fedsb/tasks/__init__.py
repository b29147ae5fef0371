"""Task loaders: turn a builtin name or a data file into train/test examples.

``loader`` holds the entry point (:func:`load_task`) and the format detection; ``bigbench``,
``bigbench_instruct``, ``commonsense``, ``math_tasks``, ``nli`` and ``generic`` convert one source format
each; ``split`` makes held-out splits; ``builtin`` names the tasks shipped with fedsb.
"""

from fedsb.tasks.base import Example, TaskData
from fedsb.tasks.builtin import BUILTIN_TASKS
from fedsb.tasks.loader import load_eval_examples, load_task
from fedsb.tasks.split import split_train_test

__all__ = ["BUILTIN_TASKS", "Example", "TaskData", "load_eval_examples", "load_task", "split_train_test"]
