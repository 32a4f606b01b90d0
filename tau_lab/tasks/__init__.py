"""The tasks a study can train: each builds its population's data, model and step."""

from tau_lab.tasks.quadrants import Quadrants

TASKS = {"quadrants": Quadrants}
