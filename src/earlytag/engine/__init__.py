"""Early-exit inference: exit policies, the packed layer loop, FLOPs accounting."""

from .flops import ExitStats
from .plan import ExitPlan
from .policies import POLICIES, REGISTRY, ExitConfig, ExitPolicy, head_scores, simulate_exits, uncertainty
from .runner import Engine, EngineOutput

__all__ = ["POLICIES", "REGISTRY", "Engine", "EngineOutput", "ExitConfig", "ExitPlan", "ExitPolicy", "ExitStats",
           "head_scores", "simulate_exits", "uncertainty"]
