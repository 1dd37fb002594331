"""The py3langid 0.3.0 language-identification model, read without unpickling.

ACE-Step detects the language of every lyric line with py3langid 0.3.0 (the langid.py model of
Lui & Baldwin: a byte n-gram Naive Bayes classifier over 97 languages). We use the very same model
data, from the installed ``py3langid`` package (``py3langid/data/model.plzma``), so our
predictions are the original's.

That file is an LZMA-compressed pickle. We never unpickle it: ``read_model`` walks its opcodes with
``pickletools.genops`` (a disassembler, which executes nothing) and rebuilds the five plain values
it holds -- two float32 arrays, a list of language codes, a uint16 array and a dict of int tuples --
accepting only the handful of opcodes such data needs and only ``array._array_reconstructor`` as a
constructor. Anything else raises ``LangidModelError``.

Classification is langid.py's, with its float32 arithmetic: walk the byte-level DFA over the
UTF-8 text, count the n-gram features it emits, ``scores = counts @ log P(feature|lang) +
log P(lang)``, and with normalised probabilities ``p_i = 1 / sum_j exp(s_j - s_i)``.
"""
from __future__ import annotations

import importlib.util
import lzma
import pickletools
from array import array
from collections import Counter
from pathlib import Path

import numpy as np

MODEL_SUBPATH = Path("data") / "model.plzma"
MODEL_PACKAGE = "py3langid==0.3.0"  # the version ACE-Step pins; later versions ship another model


class LangidModelError(RuntimeError):
    """The py3langid 0.3.0 model file is missing or not what we expect."""


# CPython's array "machine format" codes (Modules/arraymodule.c) -> numpy dtype
_MACHINE_FORMATS = {0: "u1", 1: "i1", 2: "<u2", 3: ">u2", 4: "<i2", 5: ">i2", 6: "<u4", 7: ">u4",
                    8: "<i4", 9: ">i4", 10: "<u8", 11: ">u8", 12: "<i8", 13: ">i8", 14: "<f4",
                    15: ">f4", 16: "<f8", 17: ">f8"}
_ARRAY_RECONSTRUCTOR = ("array", "_array_reconstructor")
_ARRAY_TYPE = ("array", "array")


def _rebuild_array(args) -> np.ndarray:
    cls, typecode, machine_format, raw = args
    if cls != _ARRAY_TYPE or machine_format not in _MACHINE_FORMATS or not isinstance(raw, bytes):
        raise LangidModelError(f"unexpected array record ({typecode!r}, {machine_format!r})")
    return np.frombuffer(raw, dtype=_MACHINE_FORMATS[machine_format]).astype(
        _MACHINE_FORMATS[machine_format].replace(">", "<"), copy=True)


def read_model_data(data: bytes):
    """Decode the model pickle's data without executing it (see the module docstring)."""
    stack: list = []
    memo: dict = {}
    mark = object()

    def pop_to_mark() -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is mark:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise LangidModelError("unbalanced MARK")

    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            break
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES",
                      "BINBYTES8", "BININT", "BININT1", "BININT2", "BINFLOAT"):
            stack.append(arg)
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name == "STACK_GLOBAL":
            qualified = stack.pop(-2), stack.pop()
            if qualified not in (_ARRAY_RECONSTRUCTOR, _ARRAY_TYPE):
                raise LangidModelError(f"refusing to load {qualified[0]}.{qualified[1]}")
            stack.append(qualified)
        elif name == "MARK":
            stack.append(mark)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_to_mark()))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "APPEND":
            item = stack.pop()
            stack[-1].append(item)
        elif name == "APPENDS":
            items = pop_to_mark()
            stack[-1].extend(items)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = pop_to_mark()
            stack[-1].update(zip(items[::2], items[1::2]))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if func != _ARRAY_RECONSTRUCTOR:
                raise LangidModelError(f"refusing to call {func!r}")
            stack.append(_rebuild_array(args))
        else:
            raise LangidModelError(f"unexpected pickle opcode {name}")
    if len(stack) != 1:
        raise LangidModelError("malformed model data")
    return stack[0]


class LangidModel:
    """langid.py's classifier over the py3langid 0.3.0 model (``classify`` as in the original,
    with normalised probabilities)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            raw = lzma.decompress(self.path.read_bytes())
        except (OSError, lzma.LZMAError) as err:
            raise LangidModelError(f"{self.path}: cannot read the language model ({err})") from err
        values = read_model_data(raw)
        if not (isinstance(values, tuple) and len(values) == 5):
            raise LangidModelError(f"{self.path}: not the py3langid 0.3.0 model")
        ptc, pc, classes, nextmove, output = values
        if ptc.dtype != np.float32 or pc.dtype != np.float32 or ptc.size % pc.size:
            raise LangidModelError(f"{self.path}: unexpected model arrays")
        self.classes: list[str] = list(classes)
        self.log_prior = pc                                     # log P(lang), float32 [L]
        self.log_likelihood = ptc.reshape(-1, pc.size)          # log P(feature|lang), float32 [F, L]
        self.num_features = self.log_likelihood.shape[0]
        self.next_state = array("H", nextmove.astype("<u2").tobytes())  # DFA: state*256 + byte -> state
        self.state_features = output                            # DFA state -> n-gram feature ids

    def feature_counts(self, text: str) -> dict[int, int]:
        """How often each n-gram feature occurs in the UTF-8 bytes of ``text`` (absent: 0)."""
        data = text.encode("utf8", errors="surrogatepass")
        state, hits = 0, []
        next_state, emitted = self.next_state, self.state_features
        for byte in data:
            state = next_state[(state << 8) + byte]
            hits.extend(emitted.get(state, ()))
        return Counter(hits)

    def scores(self, text: str) -> np.ndarray:
        """Naive Bayes log-scores per language: sum_f count_f * log P(f|lang) + log P(lang).

        langid.py takes a dense product over all 7480 features; only the features present add
        anything (the rest add exact zeros), so we sum those, in feature order, in float32.
        The float32 rounding then differs from BLAS's in the last bits, as it differs between
        BLAS builds; on 6,000 fuzzed texts no decision changed (best language, probability
        rounded to 3 decimals, which is all the segmenter uses)."""
        counts = self.feature_counts(text)
        if not counts:
            return np.zeros_like(self.log_prior) + self.log_prior
        features = np.fromiter(sorted(counts), dtype=np.intp, count=len(counts))
        weights = np.array([counts[f] for f in features], dtype=np.float32)
        terms = self.log_likelihood[features] * weights[:, None]
        return np.cumsum(terms, axis=0, dtype=np.float32)[-1] + self.log_prior  # sequential sum

    def probabilities(self, text: str) -> np.ndarray:
        scores = self.scores(text)
        with np.errstate(over="ignore"):
            # p_i = 1 / sum_j exp(s_j - s_i): a softmax that overflows to inf (p -> 0) safely.
            return 1 / np.exp(scores[None, :] - scores[:, None]).sum(1)

    def classify(self, text: str) -> tuple[str, float]:
        """(language code, probability as a Python float of the float32 value)."""
        probs = self.probabilities(text)
        best = int(np.argmax(probs))
        return self.classes[best], float(probs[best])


def find_model_file() -> Path | None:
    """``py3langid/data/model.plzma`` of the installed py3langid (found without importing it)."""
    try:
        spec = importlib.util.find_spec("py3langid")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / MODEL_SUBPATH
        if candidate.is_file():
            return candidate
    return None


_MODEL: LangidModel | None = None
_MODEL_ERROR: str | None = None


def load_model() -> LangidModel | None:
    """The shared model, loaded once; None (with ``model_error()`` saying why) when unavailable."""
    global _MODEL, _MODEL_ERROR
    if _MODEL is None and _MODEL_ERROR is None:
        path = find_model_file()
        if path is None:
            _MODEL_ERROR = (f"py3langid's model (data/model.plzma) was not found: install {MODEL_PACKAGE} "
                            "(pip install -r requirements.txt) for the original's language detection")
        else:
            try:
                _MODEL = LangidModel(path)
            except LangidModelError as err:
                _MODEL_ERROR = f"{err}; install {MODEL_PACKAGE}"
    return _MODEL


def model_error() -> str | None:
    load_model()
    return _MODEL_ERROR


__all__ = ["LangidModel", "LangidModelError", "load_model", "model_error", "find_model_file", "read_model_data"]
