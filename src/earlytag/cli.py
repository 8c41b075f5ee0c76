"""The ``earlytag`` command. Every verb is a thin wrapper over a plain function that returns data.

Errors a user can fix print as one line (``earlytag: error: FILE:LINE: ...``) with exit status 2; anything
unexpected prints a one-line internal error (set ``EARLYTAG_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, EarlytagError
from .storage import atomic_write_text

DEMO_SENTENCES = [
    "Barack Obama visited the headquarters of Microsoft in Redmond on Tuesday.",
    "The European Union fined Google over its Android contracts, officials in Brussels said.",
    "I flew from Paris to New York with Air France and met Angela at the United Nations.",
]


def _exit_args(p: argparse.ArgumentParser, calibrate: bool = True) -> None:
    g = p.add_argument_group("early exit (default: the model's stored setting, else full depth)")
    from .engine.policies import REGISTRY

    g.add_argument("--exit", dest="policy", choices=list(REGISTRY),
                   help="; ".join(f"{name}: {rule.summary}" for name, rule in REGISTRY.items()))
    g.add_argument("--threshold", type=_threshold, help="τ, or one per layer separated by commas")
    g.add_argument("--window", type=int, help="token/patience window k: words j-k..j+k (default 2)")
    g.add_argument("--patience", type=int, help="patience: unchanged layers before a word halts")
    g.add_argument("--patience-window", action="store_true", default=None,
                   help="patience: every word of the window must be patient")
    g.add_argument("--layer", type=int, help="static: run only the first k layers")
    g.add_argument("--criterion", choices=["entropy", "maxprob"])
    g.add_argument("--pool", choices=["max", "mean"], help="sentence: pool word uncertainties")
    g.add_argument("--upper-multiplier", type=float, help="token: τ multiplier for the upper half of layers")
    g.add_argument("--kv", choices=["keep", "drop"], help="halted tokens stay keys/values (keep) or not (drop)")
    g.add_argument("--halted", choices=["rescore", "frozen"],
                   help="token: a halted word is scored again by later heads and can hold its neighbours back "
                        "(rescore, the paper) or keeps the uncertainty it halted with (frozen)")
    if calibrate:
        g.add_argument("--target-speedup", type=float,
                       help="choose thresholds on dev data that reach this FLOPs speed-up with the best score, "
                            "and store them in the model directory as its default")
        g.add_argument("--calibration-data", help="dev data for --target-speedup (default: the model's dev set)")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                   help="encoder precision: bf16/fp16 weights and activations, int8 per-channel weights with "
                        "activations quantized per call; exit decisions always in float32")
    g.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="what runs each layer step and exit head: torch, or ONNX Runtime sessions (fp32/int8; "
                        "the exit loop stays in earlytag)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    g.add_argument("--threads", type=int,
                   help="torch intra-op threads (default: what torch picks, usually one per core; on a shared "
                        "machine fewer threads than cores are often faster)")


def load_tagger(args, **kwargs):
    """The Tagger of a command: threads first, then the model in the asked precision, backend and device."""
    from .api import Tagger

    set_threads(getattr(args, "threads", None))
    return Tagger.from_pretrained(args.model, precision=getattr(args, "precision", "fp32"),
                                  backend=getattr(args, "backend", "torch"), device=getattr(args, "device", None),
                                  **kwargs)


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ConfigError("threads", f"must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _threshold(text: str) -> float | list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or comma-separated numbers: {text!r}") from None
    return values[0] if len(values) == 1 else values


def _exit_settings(args) -> dict[str, Any]:
    names = ("policy", "threshold", "window", "patience", "patience_window", "layer", "criterion", "pool",
             "upper_multiplier", "kv", "halted")
    settings = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if "layer" in settings and "policy" not in settings:
        settings["policy"] = "static"
    return settings


def _resolve_exit(tagger, args, model_dir: str):
    """The exit setting of a command: calibrate first when --target-speedup is given."""
    settings = _exit_settings(args)
    if getattr(args, "target_speedup", None):
        from .calibrate import calibrate

        dev = args.calibration_data or (tagger.config.training or {}).get("dev")
        if not dev or dev == "None":
            raise ConfigError("calibration-data", "--target-speedup needs dev data (--calibration-data PATH)")
        result = calibrate(tagger, dev, args.target_speedup, policy=settings.get("policy", "token"),
                           kv=settings.get("kv", "keep"), save_to=model_dir, data_dir=getattr(args, "data_dir", None),
                           halted=settings.get("halted", "rescore"))
        note = "" if result.reached else f" (target not reached: the fastest setting gives {result.flops_speedup:.2f}x)"
        print(f"calibrated on {dev}: {result.exit.describe()} -> dev score {100 * result.score:.2f} at "
              f"{result.flops_speedup:.2f}x FLOPs{note}; stored in {model_dir}/config.json", file=sys.stderr)
        return result.exit
    return tagger.exit_config(settings or None)


# ----------------------------------------------------------------------------- verbs


def cmd_train(args) -> int:
    from .train.trainer import TrainConfig, train

    set_threads(args.threads)
    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
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
    result = tagger.evaluate(args.data, exit=cfg, mode=args.mode, per_layer=not args.no_per_layer,
                             data_dir=args.data_dir, scheme=args.scheme, tag_field=args.tag_field)
    print(format_evaluation(result, tagger.config.task))
    if args.json:
        text = json.dumps(result, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            atomic_write_text(args.json, text)
    return 0


def cmd_predict(args) -> int:

    tagger = load_tagger(args, batch_size=args.batch_size)
    cfg = _resolve_exit(tagger, args, args.model)
    if args.engine == "ray":
        from .ray_tagging import tag_corpus

        summary = tag_corpus(args.model, args.input, args.output, exit=cfg.to_dict(), batch_size=args.batch_size,
                             address=args.address, num_actors=args.actors, output_format=args.format)
    else:
        from .predict import predict_file

        summary = predict_file(tagger, args.input, args.output, args.format, args.input_format, cfg,
                               args.batch_size, progress=not args.quiet and args.output != "-")
    if args.output != "-" or args.engine == "ray":
        print(json.dumps(summary), file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from .bench import BenchConfig, run_bench

    set_threads(args.threads)
    cfg = BenchConfig(model=args.model, data=args.data, out=args.out, batch_sizes=args.batch_sizes,
                      precisions=args.precisions, compare=args.compare or [], timing=not args.no_timing,
                      noise_spread=args.noise_spread,
                      policies=args.policies, repeats=args.repeats, limit=args.limit,
                      timing_limit=args.timing_limit, timing_limit_b1=args.timing_limit_b1, kv=args.kv_modes,
                      halted=args.halted_modes,
                      data_dir=args.data_dir, progress=not args.quiet, target_speedup=args.target_speedup,
                      calibration_data=args.calibration_data, label=args.label, grid=args.grid,
                      compare_models=args.compare_model or [], refill=not args.no_refill)
    result = run_bench(cfg)
    print(result["markdown"])
    return 0


def cmd_calibrate(args) -> int:
    from .calibrate import calibrate

    tagger = load_tagger(args)
    result = calibrate(tagger, args.data, args.target_speedup, policy=args.policy, kv=args.kv, limit=args.limit,
                       save_to=None if args.dry_run else args.model, data_dir=args.data_dir, halted=args.halted)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def cmd_serve(args) -> int:
    from .serve.app import Limits, serve

    limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, request_timeout_s=args.request_timeout,
                    read_timeout_s=args.read_timeout, max_queue_words=args.max_queue_words)
    set_threads(args.threads)
    serve(args.model, host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
          batching=not args.no_batching, limits=limits,
          load={"precision": args.precision, "backend": args.backend, "device": args.device})
    return 0


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
    from .model.encoders import assemble_mpnet, resolve_encoder

    if args.action == "setup":
        if args.name.lower() not in ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"):
            raise ConfigError("name", "only all-mpnet-base-v2 needs a setup step")
        print(assemble_mpnet(args.dest))
    else:
        print(resolve_encoder(args.name))
    return 0


def cmd_demo(args) -> int:
    """Train on (a subset of) UNER English EWT with the default encoder, show per-layer dev F1, tag examples."""
    from .api import Tagger
    from .report import format_layer_table
    from .train.trainer import TrainConfig, train

    out = Path(args.output)
    log = train(TrainConfig(train="uner-en-ewt:train", dev="uner-en-ewt:dev", output=str(out), task="ner",
                            epochs=args.epochs, train_limit=args.train_limit, dev_limit=args.dev_limit,
                            lr=1e-4, freeze_epochs=1, progress=not args.quiet, data_dir=args.data_dir,
                            made_by="earlytag demo", overwrite=_made_by_demo(out)))
    tagger = Tagger.from_pretrained(out)
    best = max(log["epochs"], key=lambda e: e["selection_score"])
    print(f"\nTrained on {log['train_sentences']} sentences in {log['seconds']:.0f}s; "
          f"best epoch {best['epoch']}. Dev F1 of every exit head:")
    print(format_layer_table([{"layer": i + 1, "score": s} for i, s in enumerate(best["dev_per_layer"])]))
    for policy in ({"policy": "none"}, {"policy": "token", "threshold": 0.1, "window": 2}):
        print(f"\nexit={ {k: v for k, v in policy.items()} }")
        for doc in tagger.pipe(DEMO_SENTENCES, exit=policy):
            ents = ", ".join(f"{s['text']!r} {s['label']} [{s['start']}:{s['end']}]" for s in doc["spans"]) or "-"
            layers = " ".join(str(t["exit_layer"]) for t in doc["tokens"])
            print(f"  {doc['text']}\n    entities: {ents}\n    exit layer per word: {layers}")
    print(f"\nmodel saved in {out}/ (try: earlytag predict {out} - <<< 'Angela Merkel visited Paris.')")
    return 0


def _made_by_demo(directory: Path) -> bool:
    """The demo replaces the model it wrote itself on an earlier run, and nothing else."""
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        return raw["earlytag"]["training"].get("made_by") == "earlytag demo"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="earlytag", description="Early-exit sequence labeling with BERT-family encoders.")
    parser.add_argument("--version", action="version", version=f"earlytag {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_opts(p):
        p.add_argument("--data-dir", help="directory with the known data sets (default: $EARLYTAG_DATA)")
        p.add_argument("--scheme", default="auto", help="chunk tag scheme of the files: auto, iob1, iob2, iobes, bilou")
        p.add_argument("--tag-field", default="upos", choices=["upos", "xpos"], help="CoNLL-U tag column")

    p = sub.add_parser("train", help="fine-tune an early-exit tagger")
    p.add_argument("--train", required=True, help="training data: a file or a known name such as uner-en-ewt:train")
    p.add_argument("--dev", help="dev data for checkpoint selection")
    p.add_argument("--task", choices=["ner", "chunk", "pos", "cws"], default="ner")
    p.add_argument("--encoder", help="Hugging Face name or local directory (default all-MiniLM-L6-v2)")
    p.add_argument("--output", required=True, help="model directory to write (new or empty; an existing model "
                                                   "only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the model in --output (files earlytag did not write are kept)")
    p.add_argument("--stage", choices=["joint", "self-sampling"], help="joint (stage 1) or self-sampling (stage 2)")
    p.add_argument("--init", help="stage-1 model directory to start self-sampling from")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="encoder learning rate (default 5e-5)")
    p.add_argument("--head-lr", type=float, help="exit head learning rate (default 1e-3)")
    p.add_argument("--warmup", type=float, help="share of steps for linear warm-up (default 0.1)")
    p.add_argument("--freeze-epochs", type=int, help="epochs with the encoder frozen (default 1)")
    p.add_argument("--max-grad-norm", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-length", type=int, help="sub-word tokens per window (default 512)")
    p.add_argument("--label-scheme", choices=["iob2", "iobes"])
    p.add_argument("--strict", action="store_true", default=None, help="reject tags that break the scheme")
    p.add_argument("--train-limit", type=int, help="use only the first N training sentences")
    p.add_argument("--dev-limit", type=int)
    p.add_argument("--kv", choices=["keep", "drop"], help="self-sampling: train for kv=keep or kv=drop")
    g = p.add_argument_group("self-sampling (stage 2); defaults: the --recipe")
    g.add_argument("--recipe", choices=["authors", "earlytag-0.1"],
                   help="authors: as the paper's code runs it (default); earlytag-0.1: this project's first recipe")
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
    g.add_argument("--halted", choices=["rescore", "frozen"],
                   help="exit rule the sampled exits simulate (and the dev selection uses): rescore (the paper)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: this process's GPU if any, else cpu)")
    p.add_argument("--quiet", action="store_true")
    data_opts(p)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: what torch picks)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a model on tagged data")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--json", help="write the metrics JSON here (- for stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--mode", choices=["default", "strict"], default="default", help="span matching (seqeval modes)")
    p.add_argument("--no-per-layer", action="store_true", help="skip the per-layer table")
    data_opts(p)
    _exit_args(p)
    _runtime_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="tag documents")
    p.add_argument("model")
    p.add_argument("input", help="a file or - for standard input")
    p.add_argument("--output", default="-")
    p.add_argument("--format", choices=["jsonl", "conll"], default="jsonl")
    p.add_argument("--input-format", default="auto", choices=["auto", "text", "jsonl", "conll", "conllu", "uner"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--address", help="ray: cluster address (default: start a local Ray)")
    p.add_argument("--actors", type=int, default=None, help="ray: number of tagging actors")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--data-dir")
    _exit_args(p)
    _runtime_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("bench", help="sweep exit settings: score, FLOPs and wall-clock speed-up")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--policies", nargs="+", default=["static", "sentence", "token", "patience"])
    p.add_argument("--kv-modes", nargs="+", default=["keep"], choices=["keep", "drop"])
    p.add_argument("--halted-modes", nargs="+", default=["rescore"], choices=["rescore", "frozen"],
                   help="token exit: sweep with halted words re-scored (the paper) and/or frozen")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16", "int8"],
                   help="run every setting in each precision; wall-clock speed-ups are against fp32 full depth")
    p.add_argument("--compare", nargs="+", choices=["hf-pipeline", "ort-fp32", "ort-int8"],
                   help="peers on the same weights at full depth, timed in the same run on the same texts")
    p.add_argument("--no-timing", action="store_true", help="scores and FLOPs only, no wall-clock timing")
    p.add_argument("--noise-spread", type=float, default=0.15,
                   help="flag a wall-clock figure whose passes spread more than this share of their median")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, help="use only the first N sentences")
    p.add_argument("--timing-limit", type=int, help="sentences timed at batch sizes > 1 (default: all)")
    p.add_argument("--timing-limit-b1", type=int, default=400, help="sentences timed at batch size 1")
    p.add_argument("--grid", choices=["default", "small"], default="default", help="small: fewer settings")
    p.add_argument("--no-refill", action="store_true", help="time every batch on its own (no refill of thin "
                                                            "layers across consecutive batches)")
    p.add_argument("--compare-model", action="append", help="another (smaller) model timed at full depth against "
                                                             "this one in the same process (repeatable)")
    p.add_argument("--target-speedup", type=float)
    p.add_argument("--calibration-data")
    p.add_argument("--label", help="name of this model in the results")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--data-dir")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: what torch picks)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("calibrate", help="choose and store exit thresholds for a target speed-up")
    p.add_argument("model")
    p.add_argument("data", help="dev data")
    p.add_argument("--target-speedup", type=float, required=True)
    p.add_argument("--policy", default="token", choices=["token", "sentence", "patience", "static"])
    p.add_argument("--kv", default="keep", choices=["keep", "drop"])
    p.add_argument("--halted", default="rescore", choices=["rescore", "frozen"])
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--dry-run", action="store_true", help="do not store the result in the model directory")
    p.add_argument("--data-dir")
    _runtime_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("serve", help="HTTP service with a page that shows where each token exits")
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--no-batching", action="store_true", help="run every request on its own")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (more: 413)")
    p.add_argument("--max-chars", type=int, default=20_000, help="characters per text (more: 413)")
    p.add_argument("--request-timeout", type=float, default=60.0,
                   help="seconds a request may take, queueing included (then 504 and its work is dropped)")
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client has to send its whole request (then 408 and the connection closes)")
    p.add_argument("--max-queue-words", type=int, default=200_000,
                   help="words allowed to wait for the model; beyond it requests get 503 with Retry-After")
    _runtime_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("loadtest", help="bounded load test of the service on loopback, with and without batching")
    p.add_argument("model")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--texts-per-request", type=int, default=2)
    p.add_argument("--data", help="take the texts from this data set (default: built-in sentences)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--no-compare", action="store_true", help="only the micro-batched service")
    p.add_argument("--scenario", choices=["compare", "mixed"], default="compare",
                   help="compare: the same load with and without micro-batching; mixed: a separate server process "
                        "gets single sentences, medium and huge (64 x 20,000 characters) requests and 5%% "
                        "poisoned ones all at once (isolation, fairness, memory, /metrics)")
    p.add_argument("--threads", type=int, help="mixed: torch threads of the server process")
    p.add_argument("--huge", type=int, default=2, help="mixed: requests of 64 texts x 20,000 characters")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--data-dir")
    _exit_args(p, calibrate=False)
    p.set_defaults(func=cmd_loadtest)

    p = sub.add_parser("data", help="list or fetch the known public data sets")
    p.add_argument("action", choices=["list", "get"])
    p.add_argument("names", nargs="*", help="e.g. uner-en-ewt:dev")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("encoders", help="resolve or set up the offline-installable encoders")
    p.add_argument("action", choices=["setup", "resolve"])
    p.add_argument("name")
    p.add_argument("--dest")
    p.set_defaults(func=cmd_encoders)

    p = sub.add_parser("demo", help="train on UNER English EWT with the default encoder and tag examples")
    p.add_argument("--output", default="models/demo")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=4000)
    p.add_argument("--dev-limit", type=int, default=None)
    p.add_argument("--data-dir")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
