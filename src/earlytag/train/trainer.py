"""Training: stage 1 (all exit heads and the encoder jointly) and stage 2 (self-sampling).

Stage 1 loss is Σ_l (l+1)·CE_l / Σ_l (l+1). The encoder is frozen for the first ``freeze_epochs`` so the new
heads settle; heads and encoder have their own learning rates, both with linear warm-up and decay (the
encoder's schedule starts when it is unfrozen). Gradients are clipped, everything is seeded, and the
checkpoint with the best dev score is kept (last layer at full depth for stage 1; token exit at
``select_exit`` for stage 2).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..api import Tagger
from ..data import schemes
from ..data.batching import Featurizer, Window, collate
from ..data.datasets import Dataset, load_dataset, map_labels, parse_label_map
from ..defaults import HALTED_DEFAULT, HEADS
from ..errors import ConfigError, DataError
from ..model.config import TaggerConfig
from ..model.encoders import DEFAULT_ENCODER, load_encoder
from ..model.heads import LAYER_WEIGHTS, crf_settings, distillation
from ..model.slim import Coefficients, EarlyBird, SlimSpec, prune_model
from ..model.tagger import EarlyExitTagger
from ..storage import atomic_write_text, check_output_dir
from .self_sampling import RECIPES, Recipe, cache_layer_outputs, flood_levels, sample_exits


@dataclass
class TrainConfig:
    train: str
    output: str
    dev: str | None = None
    task: str = "ner"
    encoder: str = DEFAULT_ENCODER
    stage: str = "joint"  # joint (stage 1) | self-sampling (stage 2, needs init)
    init: str | None = None  # stage-1 model directory for self-sampling
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5  # encoder
    head_lr: float = 1e-3
    warmup: float = 0.1  # share of each schedule spent warming up
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    layer_weights: str = "depth"  # the joint loss's weight of layer l: l+1 (the paper's) | uniform
    # stage 1: + distill · (lower heads' KL from the last head's softmax at this temperature); 0 = off, the paper's
    distill: float = 0.0
    distill_temperature: float = 1.0
    # stage 1: + teacher_weight · (every head's KL from a trained teacher's last head: a model of the same encoder
    # family and labels, e.g. the unpruned model a slim one is cut from); None = off
    teacher: str | None = None
    teacher_weight: float = 1.0
    teacher_temperature: float = 1.0  # T=1, weight 1: the best of 4 on a MiniLM proxy (scripts/teacher_sweep.sh)
    freeze_epochs: int = 1
    seed: int = 42
    head_dropout: float = 0.1
    head: str = "softmax"  # softmax | crf (earlytag.model.heads); stage 2 keeps the init model's head
    units: str = "auto"  # what a token is: words | chars (one per character) | auto (chars for cws, else words)
    crf_transitions: str = "shared"  # crf: one transition matrix for every layer (shared) or one per layer
    meanfield_iters: int = 3  # crf: mean-field updates, in the loss and the model's default decoding
    decode: str = "viterbi"  # crf: the model's default decoding (viterbi | meanfield)
    # crf: learning rate of the transitions; default 10x --head-lr (measured better than 1x: docs/results.md s. 8)
    crf_lr: float | None = None
    # structured slimming (EarlyBERT), stage 1 only: "heads=R,ffn=R" ratios removed per layer (earlytag.model.slim)
    slim: str | None = None
    slim_l1: float = 0.05  # strength of the L1 penalty on the coefficients (per coefficient, added to the loss)
    slim_lr: float = 1e-2  # learning rate of the coefficients
    slim_check_every: int = 50  # steps between two draws of the pruning mask
    slim_span: int | None = None  # steps between the two masks of a distance (a multiple of it; default: the same)
    slim_eps: float = 0.05  # the ticket is drawn when 3 consecutive mask distances are below this (docs/results.md s. 9)
    slim_max_steps: int | None = None  # draw it at the latest here (default: the end of the first epoch)
    max_length: int = 512
    label_scheme: str = "iob2"  # what the heads predict for chunk tasks: iob2 | iobes
    scheme: str = "auto"  # chunk scheme of the input files
    format: str = "auto"  # input file format (auto: by extension)
    on_error: str = "fail"  # a bad line: fail | skip (its sentence) | repair (drop the line)
    label_map: str | None = None  # "MISC=O,ORGANIZATION=ORG": rename gold types first
    types: list[str] | None = None  # keep only these chunk types
    strict: bool = False
    tag_field: str = "upos"
    train_limit: int | None = None  # use only the first N training sentences
    dev_limit: int | None = None
    eval_batch_size: int = 64
    kv: str = "keep"  # self-sampling: train for kv=keep or kv=drop inference
    # self-sampling (stage 2): the recipe sets everything below that is left at None (train/self_sampling.py)
    recipe: str = "authors"  # authors | earlytag-0.1
    sample_window: tuple[int, int] | None = None  # k drawn from MIN..MAX (authors: 2..7, windows of 5..15 words)
    sample_thresholds: tuple[float, ...] | None = None  # τ drawn from these (authors: 0.01 ... 0.25)
    sample_threshold_range: tuple[float, float] | None = None  # τ uniform in [LO, HI] instead
    full_share: float | None = None  # share of each batch at full depth (authors: 0.4)
    small_share: float | None = None  # share with the smallest window or the largest τ (authors: 0.2)
    small_rule: str | None = None  # either | both
    layer_loss: str | None = None  # batch-sum | active-mean
    flooding: str | None = None  # token | batch | off
    flood_level: float | None = None  # multiple of the stage-1 loss
    halted: str = HALTED_DEFAULT  # exit rule of the simulation and of the dev selection (as the engine will run)
    select_exit: dict[str, Any] = field(default_factory=lambda: {"policy": "token", "threshold": 0.1, "window": 2})
    progress: bool = True
    made_by: str = "earlytag train"  # recorded in the model's config (the demo marks its own models)
    command: str | None = None  # how the model was made, for its card (default: this process's command line)
    overwrite: bool = False  # replace an existing model in `output` (files earlytag did not write are kept)
    data_dir: str | None = None
    device: str | None = None  # default: the GPU of this process when there is one, else the CPU

    def token_units(self) -> str:
        """words | chars: stage 2 keeps the init model's; ``auto`` is chars for cws."""
        if self.stage == "self-sampling" and self.init:
            from ..model.tagger import read_tagger_config

            units = read_tagger_config(self.init).units
            if self.units not in ("auto", units):
                raise ConfigError("units", f"self-sampling keeps the init model's units ({units}), not {self.units}")
            return units
        if self.units == "auto":
            return "chars" if self.task == "cws" else "words"
        return self.units

    def validate(self) -> TrainConfig:
        if self.stage not in ("joint", "self-sampling"):
            raise ConfigError("stage", f"expected joint or self-sampling, got {self.stage!r}")
        if self.stage == "self-sampling" and not self.init:
            raise ConfigError("init", "self-sampling starts from a stage-1 model: give --init MODEL_DIR")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.freeze_epochs < 0:
            raise ConfigError("freeze_epochs", "must be >= 0")
        if self.label_scheme not in ("iob2", "iobes"):
            raise ConfigError("label_scheme", "expected iob2 or iobes")
        if self.layer_weights not in LAYER_WEIGHTS:
            raise ConfigError("layer_weights", f"expected one of {', '.join(LAYER_WEIGHTS)}, got {self.layer_weights!r}")
        if self.distill < 0 or self.distill_temperature <= 0:
            raise ConfigError("distill", f"--distill must be >= 0 and --distill-temperature > 0, got {self.distill} "
                                         f"and {self.distill_temperature}")
        if self.distill and (self.stage != "joint" or self.head != "softmax"):
            raise ConfigError("distill", "self-distillation trains softmax exit heads in stage 1 (--stage joint, "
                                         "--head softmax)")
        if self.teacher is not None:
            if self.stage != "joint" or self.head != "softmax":
                raise ConfigError("teacher", "a teacher trains softmax exit heads in stage 1 (--stage joint, "
                                             "--head softmax)")
            if self.teacher_weight < 0 or self.teacher_temperature <= 0:
                raise ConfigError("teacher", f"--teacher-weight must be >= 0 and --teacher-temperature > 0, got "
                                             f"{self.teacher_weight} and {self.teacher_temperature}")
        if self.units not in ("auto", "words", "chars") or (self.units == "words" and self.task == "cws") \
                or (self.units == "chars" and self.task == "pos"):
            raise ConfigError("units", f"{self.units!r} with task {self.task}: cws reads characters; pos reads words; "
                                       "ner and chunk either")
        if self.kv not in ("keep", "drop"):
            raise ConfigError("kv", "expected keep or drop")
        if self.head not in HEADS:
            raise ConfigError("head", f"expected one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "crf":
            crf_settings(self.crf_settings())
        if self.slim is not None:
            if self.stage != "joint":
                raise ConfigError("slim", "slimming searches while stage 1 fine-tunes; a slim stage-1 model goes "
                                          "through self-sampling unchanged (without --slim)")
            SlimSpec.parse(self.slim)
            if self.slim_check_every < 1 or self.slim_l1 < 0 or not 0 < self.slim_eps < 1:
                raise ConfigError("slim", "needs --slim-check-every >= 1, --slim-l1 >= 0, 0 < --slim-eps < 1")
            if self.slim_span is not None and (self.slim_span < 1 or self.slim_span % self.slim_check_every):
                raise ConfigError("slim_span", f"--slim-span {self.slim_span} must be a positive multiple of "
                                               f"--slim-check-every {self.slim_check_every}")
        if self.stage == "self-sampling":
            self.self_sampling_recipe()
        return self

    def crf_settings(self) -> dict[str, Any]:
        return {"transitions": self.crf_transitions, "meanfield_iters": self.meanfield_iters, "decode": self.decode}

    def self_sampling_recipe(self) -> Recipe:
        """The stage-2 recipe: the named one, with every setting given explicitly put in its place."""
        if self.recipe not in RECIPES:
            raise ConfigError("recipe", f"expected one of {', '.join(RECIPES)}, got {self.recipe!r}")
        recipe = RECIPES[self.recipe]()
        s = recipe.sampling
        if self.sample_window is not None:
            lo, hi = self.sample_window
            if not 0 <= lo <= hi:
                raise ConfigError("sample_window", f"expected 0 <= MIN <= MAX, got {lo} {hi}")
            s.windows = tuple(range(lo, hi + 1))
        if self.sample_thresholds is not None:
            s.thresholds, s.threshold_range = tuple(self.sample_thresholds), None
        if self.sample_threshold_range is not None:
            s.threshold_range = tuple(self.sample_threshold_range)
        for name in ("full_share", "small_share", "small_rule"):
            if getattr(self, name) is not None:
                setattr(s, name, getattr(self, name))
        s.halted = self.halted
        for name in ("layer_loss", "flooding", "flood_level"):
            if getattr(self, name) is not None:
                setattr(recipe, name, getattr(self, name))
        if recipe.layer_loss not in ("batch-sum", "active-mean"):
            raise ConfigError("layer_loss", f"expected batch-sum or active-mean, got {recipe.layer_loss!r}")
        if recipe.flooding not in ("token", "batch", "off"):
            raise ConfigError("flooding", f"expected token, batch or off, got {recipe.flooding!r}")
        s.validate()
        return recipe


@dataclass
class Distributed:
    """This process's place in a torchrun / Accelerate launch (rank 0 of 1 when launched plainly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False  # torch.distributed is initialised (launched by torchrun or accelerate)

    @classmethod
    def from_env(cls) -> Distributed:
        if "LOCAL_RANK" not in os.environ:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]), True)

    def device(self, requested: str | None) -> torch.device:
        if requested:
            return torch.device(requested)
        return torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True)  # heads of layers no word reaches

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _limit(dataset: Dataset, n: int | None) -> Dataset:
    if n is not None and n < len(dataset.sentences):
        dataset.sentences = dataset.sentences[:n]
    return dataset


def _label_ids(dataset: Dataset, labels: list[str], label_scheme: str, chunking: bool) -> list[list[int]]:
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for sent in dataset.sentences:
        tags = schemes.from_iob2(sent.tags, label_scheme) if chunking and label_scheme != "iob2" else sent.tags
        try:
            out.append([index[t] for t in tags])
        except KeyError as err:
            raise DataError(f"label {err.args[0]!r} is not among the model's labels", sent.source) from None
    return out


def _batches(windows: list[Window], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: sort within pools of 50 batches, then shuffle the batches."""
    order = list(range(len(windows)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i:i + pool], key=lambda j: len(windows[j]))
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _schedule(step: int, start: int, total: int, warmup: float) -> float:
    """Linear warm-up then linear decay over steps [start, total); 0 before start."""
    if step < start:
        return 0.0
    span = max(total - start, 1)
    pos = step - start
    warm = max(int(warmup * span), 1)
    return (pos + 1) / warm if pos < warm else max(0.0, (span - pos) / max(span - warm, 1))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a tagger; returns the training log (also written to ``OUTPUT/training_log.json``)."""
    cfg.validate()
    seed_everything(cfg.seed)
    dist = Distributed.from_env()
    device = dist.device(cfg.device)
    main_process = dist.rank == 0
    if main_process:  # before any work: never replace what the user has not asked to replace
        check_output_dir(cfg.output, cfg.overwrite)
    started, cpu_started = time.perf_counter(), time.process_time()
    chunking = cfg.task in ("ner", "chunk")
    units = cfg.token_units()
    load_kw = dict(scheme=cfg.scheme, strict=cfg.strict, tag_field=cfg.tag_field, data_dir=cfg.data_dir,
                   format=cfg.format, on_error=cfg.on_error, units=units)
    train_set = _limit(load_dataset(cfg.train, cfg.task, **load_kw), cfg.train_limit)
    dev_set = _limit(load_dataset(cfg.dev, cfg.task, **load_kw), cfg.dev_limit) if cfg.dev else None
    for data in (train_set, dev_set):
        if data is None:
            continue
        if cfg.label_map or cfg.types:
            map_labels(data.sentences, cfg.task, parse_label_map(cfg.label_map), cfg.types)
        if data.report and main_process:
            print(f"earlytag: warning: {data.path}: {data.report.describe()}", file=sys.stderr)

    if cfg.stage == "joint":
        encoder, tokenizer, resolved = load_encoder(cfg.encoder)
        labels = sorted({t for s in train_set.sentences for t in
                         (schemes.from_iob2(s.tags, cfg.label_scheme) if chunking else s.tags)})
        if chunking and "O" in labels:  # O first, by convention
            labels = ["O"] + [lab for lab in labels if lab != "O"]
        tagger_cfg = TaggerConfig(
            labels=labels, task=cfg.task, input_scheme=train_set.scheme if chunking else None,
            label_scheme=cfg.label_scheme if chunking else None, head_dropout=cfg.head_dropout,
            max_length=cfg.max_length,  # clamped to the encoder's positions by the model
            word_splitter="chars" if units == "chars" else "regex", encoder_name=cfg.encoder,
            head=cfg.head, crf=cfg.crf_settings() if cfg.head == "crf" else None,
        )
        model = EarlyExitTagger(tagger_cfg, encoder.config, encoder)
        tagger = Tagger(model, tokenizer, device)
    else:
        tagger = Tagger.from_pretrained(cfg.init, device=str(device))
        model, tokenizer = tagger.model, tagger.tokenizer
        if model.config.task != cfg.task:
            raise ConfigError("task", f"the init model was trained for {model.config.task}, not {cfg.task}")
        resolved = cfg.init
        if model.head.structured and cfg.self_sampling_recipe().flooding == "token":
            raise ConfigError("flooding", f"{cfg.init} has a CRF head, whose loss is per sentence; token flooding "
                                          "floods each word's cross-entropy: use --flooding batch or --flooding off")

    teacher = _Teacher(cfg.teacher, model, tokenizer, device) if cfg.teacher else None
    featurizer = Featurizer(tokenizer, model.config.max_length, model.config.window_overlap)
    label_ids = _label_ids(train_set, model.config.labels, model.config.label_scheme or "iob2", chunking)
    windows = featurizer.windows([s.tokens for s in train_set.sentences], label_ids)

    recipe = cache = None
    if cfg.stage == "self-sampling":
        recipe = cfg.self_sampling_recipe()
        with tqdm(total=len(windows), desc="caching stage-1 predictions", disable=not cfg.progress,
                  file=sys.stderr) as bar:
            cache = cache_layer_outputs(model, windows, featurizer.pad_id, cfg.eval_batch_size, progress=bar,
                                        layer_weights=cfg.layer_weights)

    rng = random.Random(cfg.seed)  # batch order: the same on every process
    sample_rng = rng if dist.world == 1 else random.Random(cfg.seed + 1 + dist.rank)
    steps_per_epoch = math.ceil(len(windows) / cfg.batch_size) // dist.world
    total_steps = steps_per_epoch * cfg.epochs
    freeze_steps = steps_per_epoch * min(cfg.freeze_epochs, cfg.epochs)  # both stages
    optimizer = _optimizer(model, cfg)
    scheds = [lambda s: _schedule(s, freeze_steps, total_steps, cfg.warmup),  # encoder (decay)
              lambda s: _schedule(s, freeze_steps, total_steps, cfg.warmup),  # encoder (no decay)
              lambda s: _schedule(s, 0, total_steps, cfg.warmup),  # heads
              lambda s: _schedule(s, 0, total_steps, cfg.warmup)]  # the CRF (a softmax head: no parameters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, scheds)

    output = Path(cfg.output)
    log: dict[str, Any] = {"config": _jsonable(asdict(cfg)), "encoder_path": resolved, "epochs": [],
                           "train_sentences": len(train_set.sentences), "train_windows": len(windows),
                           "dev_sentences": len(dev_set.sentences) if dev_set else 0,
                           "torch_threads": torch.get_num_threads()}
    if cache is not None:
        log["stage1_train_loss"] = cache.mean_loss
        log["recipe"] = _jsonable(asdict(recipe))
    best = -1.0
    step = 0
    search = None
    if cfg.slim is not None:
        if dist.world > 1:
            raise ConfigError("slim", "slimming runs in one process (it reshapes the model mid-training)")
        search = _SlimSearch(model, cfg, steps_per_epoch, device)
        log["slim"] = search.log
    for epoch in range(cfg.epochs):
        frozen = step < freeze_steps
        for p in model.encoder.parameters():
            p.requires_grad_(not frozen)
        model.train()
        runner = dist.wrap(model, device)  # DDP under torchrun / accelerate (re-wrapped when freezing changes)
        epoch_start = time.perf_counter()
        losses, distill_losses, teacher_losses = [], [], []
        batches = _batches(windows, cfg.batch_size, rng)
        batches = batches[dist.rank: len(batches) // dist.world * dist.world: dist.world]  # this process's share
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}" + (" (encoder frozen)" if frozen else ""),
                   disable=not cfg.progress or not main_process, file=sys.stderr)
        for idx in bar:
            batch = collate([windows[i] for i in idx], featurizer.pad_id).to(device)
            word_exit = flood = None
            reduction = "active-mean"  # stage 1: every word counts at every layer, both reductions agree
            if recipe is not None:
                num_words = batch.word_pos.shape[1]
                word_exit = sample_exits(cache, idx, num_words, recipe.sampling, sample_rng).to(device)
                reduction = recipe.layer_loss
                if recipe.flooding == "token":
                    flood = flood_levels(cache, idx, num_words, recipe.flood_level).to(device)
            out = runner(batch.input_ids, batch.attention_mask, batch.word_pos, labels=batch.labels,
                         word_exit=word_exit, token_word=batch.token_word, kv=cfg.kv, loss_reduction=reduction,
                         flood=flood, layer_weights=cfg.layer_weights, distill=cfg.distill,
                         distill_temperature=cfg.distill_temperature)
            loss = out.loss
            if teacher is not None:
                kd = distillation(out.logits, teacher.logits(batch), batch.labels, cfg.teacher_temperature,
                                  cfg.layer_weights)
                loss = loss + cfg.teacher_weight * kd
                teacher_losses.append(kd.item())
            if search is not None:
                loss = loss + cfg.slim_l1 * search.coefs.penalty()
            if recipe is not None and recipe.flooding == "batch":
                level = recipe.flood_level * cache.mean_loss
                loss = (loss - level).abs() + level
            optimizer.zero_grad(set_to_none=True)
            if search is not None:
                search.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            if search is not None and search.step(step):  # the ticket is drawn: the model is slim from here on
                search = None
                for group, params in zip(optimizer.param_groups[:2], _encoder_groups(model)):
                    for p in group["params"]:  # the pruned modules' state goes; the heads' stays
                        optimizer.state.pop(p, None)
                    group["params"] = params
                for p in model.encoder.parameters():
                    p.requires_grad_(not frozen)
                runner = dist.wrap(model, device)
            losses.append(out.loss.item())
            if out.distill_loss is not None:
                distill_losses.append(out.distill_loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        bar.close()
        entry: dict[str, Any] = {"epoch": epoch + 1, "encoder_frozen": frozen, "train_loss": float(np.mean(losses)),
                                 "seconds": time.perf_counter() - epoch_start}
        if distill_losses:  # the self-distillation term alone (train_loss includes it, weighted)
            entry["distill_loss"] = float(np.mean(distill_losses))
        if teacher_losses:  # the teacher's term alone (train_loss is the joint cross-entropy without it)
            entry["teacher_loss"] = float(np.mean(teacher_losses))
        model.eval()
        if main_process:  # evaluation and checkpoints: the first process only
            if dev_set is not None:
                entry.update(_dev_scores(tagger, dev_set, cfg))
                score = entry["selection_score"]
            else:
                score = float(epoch)  # no dev data: keep the last epoch
            entry["best"] = score > best
            log["epochs"].append(entry)
            if score > best:
                best = score
                model.config.training = {
                    "stage": cfg.stage, "epoch": epoch + 1, "epochs": cfg.epochs, "freeze_epochs": cfg.freeze_epochs,
                    "train": str(cfg.train), "train_limit": cfg.train_limit, "train_sentences": len(train_set.sentences),
                    "dev": str(cfg.dev), "dev_limit": cfg.dev_limit, "selection_score": score, "seed": cfg.seed,
                    "kv": cfg.kv if cfg.stage == "self-sampling" else "keep", "processes": dist.world,
                    "made_by": cfg.made_by, "command": cfg.command or _command(),
                    "recipe": cfg.recipe if cfg.stage == "self-sampling" else None, "teacher": cfg.teacher,
                    **{k: entry[k] for k in ("dev_per_layer", "dev_exit", "dev_exit_score", "dev_exit_flops_speedup")
                       if k in entry}}
                log["best_selection_score"] = best
                # the output was checked (or cleared by --overwrite) before training: replace our own save
                tagger.save_pretrained(output, overwrite=True,
                                       extra_files={"training_log.json": json.dumps(log, indent=2) + "\n"})
            _print_epoch(entry)
        entry.update(memory_report())  # the allocator's freed blocks go back to the system: memory stays bounded
        dist.barrier()
    log["best_selection_score"] = best
    log["seconds"] = time.perf_counter() - started
    # CPU time of this process (all its threads): unlike wall time, not inflated when the machine is shared
    log["cpu_seconds"] = time.process_time() - cpu_started
    log["torch_threads"] = torch.get_num_threads()
    log["processes"] = dist.world
    if main_process and output.is_dir():
        atomic_write_text(output / "training_log.json", json.dumps(log, indent=2) + "\n")
    return log


class _SlimSearch:
    """EarlyBERT's search during stage 1: coefficients with an L1 penalty, the pruning mask drawn every
    ``slim_check_every`` steps, the ticket drawn (and the encoder pruned in place) once the mask stops changing."""

    def __init__(self, model: EarlyExitTagger, cfg: TrainConfig, steps_per_epoch: int, device):
        self.model, self.cfg = model, cfg
        self.spec = SlimSpec.parse(cfg.slim)
        self.coefs = Coefficients(model.adapter).to(device)
        self.optimizer = torch.optim.Adam(self.coefs.parameters(), lr=cfg.slim_lr)
        self.span = cfg.slim_span or cfg.slim_check_every
        self.bird = EarlyBird(self.spec, cfg.slim_eps, patience=3, span=self.span // cfg.slim_check_every)
        self.max_steps = cfg.slim_max_steps or steps_per_epoch
        self.started = time.perf_counter()
        self.log: dict[str, Any] = {"heads": self.spec.heads, "ffn": self.spec.ffn, "l1": cfg.slim_l1,
                                    "check_every": cfg.slim_check_every, "span": self.span, "eps": cfg.slim_eps,
                                    "checks": [], "params_before": _encoder_params(model)}

    def step(self, step: int) -> bool:
        """After the training step ``step``: move the coefficients, check the mask when due, prune when the ticket
        is drawn. True when the model changed (the search is then over)."""
        self.optimizer.step()
        if step % self.cfg.slim_check_every and step < self.max_steps:
            return False
        drawn = self.bird.check(self.coefs)
        if self.bird.distances:
            self.log["checks"].append({"step": step, "distance": self.bird.distances[-1]})
        if not drawn and step < self.max_steps:
            return False
        self.coefs.detach_hooks()
        record = prune_model(self.model, self.spec, self.coefs.masks(self.spec), self.coefs)
        self.log.update({"ticket_step": step, "early_bird": drawn, "search_seconds": time.perf_counter() - self.started,
                         "params_after": _encoder_params(self.model), "kept": record})
        return True


def _encoder_params(model: EarlyExitTagger) -> int:
    return sum(p.numel() for p in model.encoder.parameters())


def _command() -> str:
    """This process's command line, as a user could type it again."""
    import shlex

    argv = list(sys.argv)
    if argv and argv[0].endswith(("earlytag", "cli.py", "__main__.py")):
        argv[0] = "earlytag"
    return " ".join(shlex.quote(a) for a in argv)


def memory_report() -> dict[str, float]:
    """Give freed heap memory back to the system (glibc keeps it after the peaks of evaluation and of long
    batches), then report this process's resident memory now and at its peak, in MB."""
    import ctypes
    import gc
    import resource

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    now = 0.0
    try:
        with open("/proc/self/status") as f:
            now = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"rss_mb": round(now, 1), "peak_rss_mb": round(peak, 1)}


def _encoder_groups(model: EarlyExitTagger) -> tuple[list, list]:
    """The encoder's parameters with weight decay and without (biases, LayerNorms)."""
    decay, no_decay = [], []
    for name, p in model.encoder.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return decay, no_decay


def fused_adamw_on(device: torch.device) -> bool:
    """Whether torch has a fused AdamW kernel for ``device``: CUDA, and the CPU from torch 2.4. The same update as
    the default (multi-tensor) AdamW, in one pass over each tensor: on the CPU the step over MiniLM's 22.6 M
    parameters takes ~6x less time (docs/results.md section 9), most of it the word embeddings, which every step
    updates in full."""
    if device.type == "cuda":
        return True
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


class _Teacher:
    """A trained model whose last exit head every head of the model in training learns from (``--teacher``, with
    the weight and temperature of :func:`earlytag.model.heads.distillation`): typically the unpruned model that a
    slim one is cut from (EarlyBERT's slimming leaves less capacity than two or three epochs recover alone). It
    reads the student's batches, so it must split words with the same tokenizer; its labels must be the student's
    (in any order). Frozen, in eval mode (no dropout), in float32 on the student's device."""

    PROBE = "Angela Merkel didn't visit Zürich's 3 tallest towers in 2019: ÉLYSÉE, naïve co-operation!"

    def __init__(self, path: str, model: EarlyExitTagger, tokenizer, device: torch.device):
        tagger = Tagger.from_pretrained(path, device=str(device))
        theirs, ours = tagger.model.config.labels, model.config.labels
        if sorted(theirs) != sorted(ours):
            raise ConfigError("teacher", f"{path} predicts {theirs}; the model in training predicts {ours}: a teacher "
                                         "needs the same labels (train it on the same data and --label-scheme)")
        if tagger.tokenizer(self.PROBE)["input_ids"] != tokenizer(self.PROBE)["input_ids"]:
            raise ConfigError("teacher", f"{path} splits words with another tokenizer than the model in training "
                                         f"({tagger.model.config.encoder_name} against {model.config.encoder_name}): a "
                                         "teacher reads the student's batches, so both need the same encoder family")
        self.model = tagger.model.eval().requires_grad_(False)
        self.order = torch.tensor([theirs.index(lab) for lab in ours], device=device)  # the student's label order

    def logits(self, batch) -> torch.Tensor:
        """``(B, W, C)`` the teacher's last head on the batch, in the student's label order."""
        with torch.no_grad():
            out = self.model(batch.input_ids, batch.attention_mask, batch.word_pos)
        return out.logits[-1].index_select(-1, self.order)


def _optimizer(model: EarlyExitTagger, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = _encoder_groups(model)
    device = next(model.parameters()).device
    return torch.optim.AdamW([
        {"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0},
        {"params": list(model.heads.parameters()), "lr": cfg.head_lr, "weight_decay": 0.0},
        # the CRF's transitions: next to confident emissions their gradient is small, a larger rate may help
        {"params": list(model.head.parameters()), "lr": cfg.crf_lr or 10 * cfg.head_lr, "weight_decay": 0.0},
    ], fused=fused_adamw_on(device) or None)


def _dev_scores(tagger: Tagger, dev_set: Dataset, cfg: TrainConfig) -> dict[str, Any]:
    docs = [s.tokens for s in dev_set.sentences]
    gold = [s.tags for s in dev_set.sentences]
    from ..metrics import task_scores

    per_layer = [task_scores(cfg.task, gold, tags)["score"] for tags in tagger.layer_tags(docs, cfg.eval_batch_size)]
    out: dict[str, Any] = {"dev_per_layer": per_layer, "selection_score": per_layer[-1]}
    if cfg.stage == "self-sampling":
        exit_cfg = dict(cfg.select_exit, kv=cfg.kv, halted=cfg.halted)
        pred = tagger.predict_words(docs, exit_cfg, cfg.eval_batch_size)
        score = task_scores(cfg.task, gold, pred.tags)["score"]
        out.update({"dev_exit": exit_cfg, "dev_exit_score": score, "dev_exit_flops_speedup": pred.stats.flops_speedup,
                    "selection_score": score})
    return out


def _print_epoch(entry: dict[str, Any]) -> None:
    parts = [f"epoch {entry['epoch']}: loss {entry['train_loss']:.4f}, {entry['seconds']:.0f}s"]
    if "dev_per_layer" in entry:
        parts.append("dev per layer " + " ".join(f"{100 * s:.2f}" for s in entry["dev_per_layer"]))
    if "dev_exit_score" in entry:
        parts.append(f"dev token-exit {100 * entry['dev_exit_score']:.2f} at {entry['dev_exit_flops_speedup']:.2f}x")
    print("; ".join(parts) + (" *" if entry.get("best") else ""), file=sys.stderr)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj
