"""Plain-text tables for the terminal and markdown tables for the docs."""

from __future__ import annotations

from typing import Any


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def format_layer_table(rows: list[dict[str, Any]], title: str = "score") -> str:
    lines = [f"{'layer':>5}  {title:>7}"]
    lines += [f"{r['layer']:>5}  {pct(r['score']):>7}" for r in rows]
    return "\n".join(lines)


def layer_list(layers: list[int]) -> str:
    """Layer indices in words: ``layer 0``, ``layers 3, 4``, or ``no layer``."""
    if not layers:
        return "no layer"
    return f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"


def describe_exit(exit: dict[str, Any]) -> str:
    """An exit setting as the tables name it (``token τ=0.1 k=2 halted=frozen``) from its dict."""
    from .engine.policies import ExitConfig

    return ExitConfig.from_dict(exit).describe()


def format_evaluation(result: dict[str, Any], task: str) -> str:
    main = "accuracy" if task == "pos" else "f1"
    counted = f"{result['sentences']} sentences"
    if result.get("limit"):
        counted = f"the first {counted} (--limit)"
    lines = [
        f"data: {result.get('data')}  ({counted}, {result['tokens']} words)"
        + (f"; scheme {result['scheme']}" if result.get("scheme") else ""),
        f"exit: {describe_exit(result['exit'])}",
        f"{main}: {pct(result[main])}   precision {pct(result['precision'])}   recall {pct(result['recall'])}"
        f"   accuracy {pct(result['accuracy'])}",
        f"FLOPs speed-up {result['flops_speedup']:.2f}x   mean exit layer {result['mean_exit_layer']:.2f}"
        f"   inference {result['inference_seconds']:.2f}s   total {result['seconds']:.2f}s",
    ]
    if result.get("controller"):
        lines.append("controller: " + controller_summary(result["controller"]))
    if result.get("per_type") and task != "pos":
        lines.append(f"\n{'type':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
        for name, s in result["per_type"].items():
            lines.append(f"{name:<10}{pct(s['precision']):>10}{pct(s['recall']):>10}{pct(s['f1']):>10}{s['support']:>10}")
    if result.get("per_layer"):
        lines.append("\nevery exit head at full depth:")
        lines.append(format_layer_table(result["per_layer"], main))
    return "\n".join(lines)


def controller_summary(state: dict[str, Any], tolerance: float = 0.1) -> str:
    """One line on what a controller did over a stream (its :meth:`SpeedController.to_dict`): held (within
    ``tolerance`` of the target after the warm-up), missed, or too short a stream to say (still in its warm-up)."""
    target, tau = state["target_speedup"], state["threshold"]
    if state["tokens"] < state.get("warmup_tokens", 0):
        return (f"target {target:g}x: {state['realised_speedup_total']:.2f}x over {state['tokens']} tokens, within "
                f"the controller's warm-up of {state['warmup_tokens']} tokens (the target is held over longer "
                f"streams), τ now {tau:.4g}")
    realised = state["realised_speedup_after_warmup"]
    verdict = "held" if abs(realised / target - 1) <= tolerance else "missed"
    return (f"target {target:g}x {verdict}: {realised:.2f}x after the warm-up ({state['realised_speedup_total']:.2f}x "
            f"over all {state['tokens']} tokens), τ now {tau:.4g}"
            + (" (capped: the target is out of reach on this text)" if state["capped"] else ""))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
