"""Early-exit inference: exit policies, the packed layer loop, FLOPs accounting."""

from .flops import ExitStats
from .policies import POLICIES, ExitConfig, ExitPolicy, head_scores, simulate_exits, uncertainty
from .runner import Engine, EngineOutput

__all__ = ["POLICIES", "Engine", "EngineOutput", "ExitConfig", "ExitPolicy", "ExitStats", "head_scores", "simulate_exits",
           "uncertainty"]
