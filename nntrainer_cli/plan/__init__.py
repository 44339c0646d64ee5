from .memory import MemoryPlan, make_plan, with_swap
from .planners import NAMES as PLANNER_NAMES
from .swap_plan import SwapOptions, SwapRefusal

__all__ = ["MemoryPlan", "make_plan", "with_swap", "PLANNER_NAMES", "SwapOptions",
           "SwapRefusal"]
