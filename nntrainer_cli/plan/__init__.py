from .memory import MemoryPlan, make_plan
from .planners import NAMES as PLANNER_NAMES

__all__ = ["MemoryPlan", "make_plan", "PLANNER_NAMES"]
