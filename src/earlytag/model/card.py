"""The model card: ``README.md`` in every saved model directory, rendered from what the directory's config.json
says (encoder, data and its limits, epochs, dev scores of every exit head, the stored exit setting and its
measured speed-up, the command that made it). Rewritten whenever the model or its exit setting is saved."""

from __future__ import annotations

from typing import Any

from ..report import describe_exit, layer_list

CARD_NAME = "README.md"


def _pct(x: Any) -> str:
    return f"{100 * x:.2f}" if isinstance(x, (int, float)) else "-"


def render_card(config: dict[str, Any]) -> str:
    """Markdown for the ``config.json`` of a saved model (the encoder's keys plus the ``earlytag`` section)."""
    et = config.get("earlytag", {})
    training = et.get("training") or {}
    task = et.get("task", "?")
    metric = "accuracy" if task == "pos" else "F1"
    layers = config.get("num_hidden_layers", "?")
    lines = [
        f"# earlytag {task} tagger",
        "",
        "An early-exit sequence tagger made by [earlytag](https://pypi.org/project/earlytag/): every encoder layer "
        "has an exit head, and a word (or a sentence) stops climbing the encoder once it is confident.",
        "",
        "| | |",
        "|---|---|",
        f"| task | {task} ({len(et.get('labels', []))} labels: {', '.join(et.get('labels', [])[:12])}"
        f"{', ...' if len(et.get('labels', [])) > 12 else ''}) |",
        f"| encoder | {et.get('encoder_name') or config.get('_name_or_path') or '?'} ({config.get('model_type', '?')}, "
        f"{layers} layers, hidden size {config.get('hidden_size', '?')}) |",
    ]
    if et.get("word_splitter") == "chars":
        lines.append("| tokens | characters: raw text is split into characters (no segmenter needed); offsets are "
                     "character offsets |")
    if et.get("head") == "crf":
        from .heads import CRF_DEFAULTS

        c = {**CRF_DEFAULTS, **{k: v for k, v in (et.get("crf") or {}).items() if v is not None}}
        lines.append(f"| head | linear-chain CRF ({c['transitions']} transitions), decoded by {c['decode']} "
                     f"(mean-field: {c['meanfield_iters']} updates"
                     + (f"; runs of words below {c['block_below']:g} decoded again, from "
                        f"{c['blockwise_from']} words" if c["decode"] == "blockwise" else "")
                     + f"); exits read the {c['uncertainty']} marginals |")
    slim = et.get("slim")
    if slim:
        lines.append(f"| slim encoder | heads kept per layer: {', '.join(str(len(h)) for h in slim.get('heads', []))} of "
                     f"{config.get('num_attention_heads', '?')}; FFN widths: "
                     f"{', '.join(str(w) for w in slim.get('ffn', []))} of {config.get('intermediate_size', '?')} "
                     "(load with earlytag: transformers cannot build it from config.json) |")
    if training:
        limit = training.get("train_limit")
        sentences = training.get("train_sentences")
        data = f"{training.get('train', '?')}" + (f", first {limit} sentences" if limit else "") + (
            f" ({sentences} sentences)" if sentences else "")
        lines += [
            f"| training data | {data} |",
            f"| dev data | {training.get('dev', '-')}"
            + (f", first {training['dev_limit']} sentences" if training.get("dev_limit") else "") + " |",
            f"| stage | {training.get('stage', '?')}"
            + (f" (recipe {training.get('recipe', '?')}, kv={training.get('kv')})" if training.get("stage") == "self-sampling"
               else "") + " |",
            f"| epochs | {training.get('epochs', '?')} ({training.get('freeze_epochs', 0)} with the encoder frozen); "
            f"this checkpoint: epoch {training.get('epoch', '?')} |",
            f"| made by | `{training.get('command') or training.get('made_by', '?')}` |",
        ]
    exit_cfg = et.get("exit")
    calib = et.get("exit_calibration") or {}
    if exit_cfg and exit_cfg.get("policy", "none") != "none":
        note = ""
        if calib:
            note = (f": FLOPs speed-up {calib.get('flops_speedup', 0):.2f}x at dev {metric} {_pct(calib.get('score'))} "
                    f"on {calib.get('sentences', '?')} sentences of {calib.get('data', '?')}, chosen for "
                    f"{calib.get('target_speedup', '?')}x")
        lines.append(f"| default exit | `{exit_cfg}`{note} |")
    else:
        lines.append("| default exit | full depth (choose one: `earlytag calibrate MODEL DEV --target-speedup 2 "
                     "--set-default`) |")
    for backend, mixed in (et.get("int8_mixed") or {}).items():
        if not isinstance(mixed, dict):  # not a valid choice: loading the model says what is wrong with it
            continue
        layers = mixed.get("float_ffn_out", [])
        kept = f"in {layer_list(layers)} " + ("(from 0)" if layers else "(runs as int8)")
        lines.append(f"| int8-mixed, {backend} | FFN output kept float32 {kept}: dev {metric} "
                     f"{_pct(mixed.get('score'))} against int8 {_pct(mixed.get('scores', {}).get('int8'))} and fp32 "
                     f"{_pct(mixed.get('scores', {}).get('fp32'))} on {mixed.get('sentences', '?')} sentences "
                     f"(batch size {mixed.get('batch_size', '?')}, "
                     + (f"scored with exit `{describe_exit(mixed['exit'])}`" if mixed.get("exit")
                        else "scored at full depth")
                     + "; `earlytag quantize`) |")
    per_layer = training.get("dev_per_layer")
    if per_layer:
        lines += ["", f"Dev {metric} of every exit head at full depth (this checkpoint):", "",
                  "| layer | " + " | ".join(str(i + 1) for i in range(len(per_layer))) + " |",
                  "|---|" + "---|" * len(per_layer),
                  f"| dev {metric} | " + " | ".join(_pct(s) for s in per_layer) + " |"]
    if training.get("dev_exit_score") is not None:
        lines += ["", f"Dev {metric} with token exit `{training.get('dev_exit')}`: {_pct(training['dev_exit_score'])} "
                      f"at {training.get('dev_exit_flops_speedup', 0):.2f}x FLOPs."]
    lines += ["", "## Use", "", "```bash",
              "earlytag predict THIS_DIR - <<< 'Angela Merkel visited Paris.'",
              "earlytag evaluate THIS_DIR TEST_DATA            # test scores of every exit head",
              "```", "", "```python", "from earlytag import Tagger",
              "tagger = Tagger.from_pretrained('THIS_DIR')", "tagger('Angela Merkel visited Paris.')", "```", ""]
    if not slim:
        lines += ["The encoder weights load in transformers too: `AutoModel.from_pretrained('THIS_DIR')`.", ""]
    return "\n".join(lines)
