"""The tasks a study can train: each builds its population's data, model and step."""

from tau_lab.tasks.clip import CLIP
from tau_lab.tasks.distill import Distill
from tau_lab.tasks.module import ModuleTask
from tau_lab.tasks.pairs import PairsTask
from tau_lab.tasks.quadrants import Quadrants
from tau_lab.tasks.simclr import SimCLR

TASKS = {
    "quadrants": Quadrants,
    "simclr": SimCLR,
    "clip": CLIP,
    "pairs": PairsTask,
    "distill": Distill,
    "module": ModuleTask,
}
