#!/usr/bin/env python3
"""Regenerate tests/data/lyrics_corpus.json: the ORIGINAL ACE-Step lyric tokenizer's output on
our multilingual corpus (tests/data/lyrics_corpus.txt).

    python scripts/make_lyrics_golden.py --ace-step /path/to/ACE-Step        # a checkout
    python scripts/make_lyrics_golden.py --ace-step /path/to/ACE-Step.git    # or a (bare) git dir

What it does:
  1. builds a throw-away virtual environment outside the repository (default
     /tmp/ace_lyrics_ref) with the original's lyric dependencies from PyPI, at the versions its
     requirements.txt pins where it pins them (py3langid, num2words, pypinyin, hangul-romanize;
     cutlet + fugashi + unidic-lite and tokenizers unpinned there, so the newest);
  2. copies the original's lyric code (acestep/language_segmentation, acestep/models/lyrics_utils,
     acestep/pipeline_ace_step.py) from the given checkout into a temporary folder;
  3. re-runs this file inside that environment (``--inner``), which imports the original's
     LangSegment and VoiceBpeTokenizer, takes ``SUPPORT_LANGUAGES``, ``structure_pattern``,
     ``get_lang`` and ``tokenize_lyrics`` out of pipeline_ace_step.py (by parsing the file, so
     the heavy pipeline imports -- diffusers, torch models -- are not needed) and tokenizes every
     corpus line and song;
  4. writes the ids, the detected language and the original's cleaned text per line as JSON.

Nothing of the original is copied into this repository: only the generated data is committed.
``torch`` and ``spacy`` are replaced by empty stand-in modules inside the throw-away run: the
original's lyric tokenizer imports them at module level but does not use them on the encode path
(spacy only splits sentences longer than 250 characters in a function tokenize_lyrics never calls;
torch only appears in ``decode``).
"""
from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / "tests" / "data" / "lyrics_corpus.txt"
DEFAULT_OUT = REPO / "tests" / "data" / "lyrics_corpus.json"
DEFAULT_VENV = Path(tempfile.gettempdir()) / "ace_lyrics_ref"
# The original's requirements.txt pins these; the rest it leaves open.
REFERENCE_PACKAGES = ["py3langid==0.3.0", "num2words==0.5.14", "pypinyin==0.53.0",
                      "hangul-romanize==0.1.0", "cutlet", "fugashi[unidic-lite]", "tokenizers", "numpy"]
ORIGINAL_PATHS = ["acestep/__init__.py", "acestep/language_segmentation", "acestep/models/__init__.py",
                  "acestep/models/lyrics_utils", "acestep/pipeline_ace_step.py"]


# ---------------------------------------------------------------------------------------------
# Corpus file
# ---------------------------------------------------------------------------------------------
def read_corpus(path: Path) -> tuple[list[dict], list[dict]]:
    """(lines, songs) of the corpus text file (format described at its top)."""
    lines, songs, section, song = [], [], None, None
    for raw in path.read_text(encoding="utf-8").split("\n"):
        if raw.startswith("## "):
            section = raw[3:].strip()
            song = None
            if section.startswith("song:"):
                song = {"name": section[5:], "lines": []}
                songs.append(song)
            continue
        if raw.startswith("#") or not raw.strip():
            continue
        if song is not None:
            song["lines"].append("" if raw == "<empty>" else raw)
        else:
            lines.append({"section": section, "text": raw})
    return lines, [{"name": s["name"], "text": "\n".join(s["lines"])} for s in songs]


# ---------------------------------------------------------------------------------------------
# Outer step: environment and sources
# ---------------------------------------------------------------------------------------------
def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    stamp = venv / ".ace_lyrics_ref"
    if python.exists() and stamp.exists() and stamp.read_text() == "\n".join(REFERENCE_PACKAGES):
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REFERENCE_PACKAGES], check=True)
    stamp.write_text("\n".join(REFERENCE_PACKAGES))
    return python


def export_original(ace_step: Path, dest: Path) -> str:
    """Copy the original's lyric code into ``dest``; return the commit (or "unknown")."""
    ace_step = ace_step.expanduser().resolve()
    if (ace_step / "acestep" / "pipeline_ace_step.py").is_file():  # a work tree
        for rel in ORIGINAL_PATHS:
            src, dst = ace_step / rel, dest / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        git_args = ["git", "-C", str(ace_step)]
    else:  # a git dir (bare or .git)
        git_args = ["git", f"--git-dir={ace_step}"]
        archive = subprocess.run(git_args + ["archive", "HEAD", *ORIGINAL_PATHS], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    commit = subprocess.run(git_args + ["rev-parse", "HEAD"], capture_output=True, text=True)
    return commit.stdout.strip() if commit.returncode == 0 else "unknown"


def outer(args) -> None:
    python = ensure_venv(Path(args.venv))
    with tempfile.TemporaryDirectory(prefix="ace_orig_") as tmp:
        commit = export_original(Path(args.ace_step), Path(tmp))
        subprocess.run([str(python), str(Path(__file__).resolve()), "--inner", "--source", tmp,
                        "--commit", commit, "--corpus", str(args.corpus), "--out", str(args.out)],
                       check=True)


# ---------------------------------------------------------------------------------------------
# Inner step: runs inside the throw-away environment
# ---------------------------------------------------------------------------------------------
def _stub_unused_modules() -> None:
    torch = types.ModuleType("torch")
    torch.Tensor = type("Tensor", (), {})  # only used by isinstance() in decode
    sys.modules["torch"] = torch
    for name in ["spacy", "spacy.lang", "spacy.lang.ar", "spacy.lang.en", "spacy.lang.es",
                 "spacy.lang.ja", "spacy.lang.zh"]:
        sys.modules[name] = types.ModuleType(name)
    for module, cls in [("ar", "Arabic"), ("en", "English"), ("es", "Spanish"), ("ja", "Japanese"),
                        ("zh", "Chinese")]:
        setattr(sys.modules[f"spacy.lang.{module}"], cls, None)


def _pipeline_functions(source: Path) -> dict:
    """SUPPORT_LANGUAGES, structure_pattern, get_lang and tokenize_lyrics from the original's
    pipeline file, on their own (the file's other imports are not needed for them): the four
    definitions are written as a small module into the throw-away copy ``source`` and imported."""
    import importlib.util

    path = source / "acestep" / "pipeline_ace_step.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    wanted = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) in ("SUPPORT_LANGUAGES", "structure_pattern")
                                                for t in node.targets):
            wanted.append(node)
        if isinstance(node, ast.ClassDef) and node.name == "ACEStepPipeline":
            wanted += [f for f in node.body if isinstance(f, ast.FunctionDef)
                       and f.name in ("get_lang", "tokenize_lyrics")]
    header = ("import re\nimport types\n"
              "logger = types.SimpleNamespace(info=lambda *a, **k: None)  # tokenize_lyrics logs in debug only\n")
    extracted = source / "_ace_step_lyric_functions.py"
    extracted.write_text(header + ast.unparse(ast.Module(body=wanted, type_ignores=[])) + "\n", encoding="utf-8")
    spec = importlib.util.spec_from_file_location("_ace_step_lyric_functions", extracted)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    namespace = vars(module)
    assert {"SUPPORT_LANGUAGES", "structure_pattern", "get_lang", "tokenize_lyrics"} <= set(namespace)
    return namespace


def inner(args) -> None:
    import importlib.metadata as md

    source = Path(args.source)
    sys.path.insert(0, str(source))
    _stub_unused_modules()
    from acestep.language_segmentation import LangSegment, language_filters
    from acestep.models.lyrics_utils.lyric_tokenizer import VoiceBpeTokenizer

    ns = _pipeline_functions(source)
    pipeline = types.SimpleNamespace()
    pipeline.lang_segment = LangSegment()
    pipeline.lang_segment.setfilters(language_filters.default)
    pipeline.lyric_tokenizer = VoiceBpeTokenizer()
    pipeline.get_lang = types.MethodType(ns["get_lang"], pipeline)
    tokenize = types.MethodType(ns["tokenize_lyrics"], pipeline)
    support, structure = ns["SUPPORT_LANGUAGES"], ns["structure_pattern"]

    def canonical(lang: str) -> str:  # the same three rules as tokenize_lyrics
        lang = lang if lang in support else "en"
        return "zh" if "zh" in lang else ("es" if "spa" in lang else lang)

    lines, songs = read_corpus(Path(args.corpus))
    records = []
    for item in lines:
        line = item["text"].strip()
        detected = pipeline.get_lang(line)
        used = "en" if structure.match(line) else canonical(detected)
        try:
            text = pipeline.lyric_tokenizer.preprocess_text(line, used)
        except Exception as err:  # recorded; tokenize_lyrics then skips the line
            text = f"<error: {type(err).__name__}>"
        records.append({**item, "detected": detected, "language": canonical(detected), "used": used,
                        "normalized": text, "ids": tokenize(item["text"])})
    song_records = [{**song, "ids": tokenize(song["text"])} for song in songs]

    versions = {name: md.version(name) for name in
                ["py3langid", "num2words", "pypinyin", "hangul-romanize", "cutlet", "fugashi",
                 "unidic-lite", "tokenizers"]}
    out = {
        "about": "Output of the original ACE-Step lyric tokenizer (pipeline_ace_step.tokenize_lyrics) on "
                 "tests/data/lyrics_corpus.txt. Generated by scripts/make_lyrics_golden.py; do not edit.",
        "ace_step_commit": args.commit,
        "packages": versions,
        "fields": {"detected": "get_lang(line) as returned", "language": "after the SUPPORT_LANGUAGES/zh/spa rules",
                   "used": "language the line is encoded with ('en' for lines starting with [...])",
                   "normalized": "preprocess_text(line, used)", "ids": "tokenize_lyrics(line): [261] + ids + [2]"},
        "lines": records,
        "songs": song_records,
    }
    Path(args.out).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} lines and {len(song_records)} songs to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ace-step", help="ACE-Step checkout or git dir (required unless --inner)")
    parser.add_argument("--venv", default=str(DEFAULT_VENV), help="throw-away environment (default %(default)s)")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--commit", default="unknown", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
    elif not args.ace_step:
        parser.error("--ace-step is required (a checkout of github.com/ace-step/ACE-Step or its git dir)")
    else:
        outer(args)


if __name__ == "__main__":
    main()
