from .memory import MemoryPlan, make_plan
from .planners import NAMES as PLANNER_NAMES
from .swap import SwapOptions

__all__ = ["MemoryPlan", "make_plan", "PLANNER_NAMES", "SwapOptions"]
