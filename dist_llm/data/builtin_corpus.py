"""The stdlib-docs built-in corpus (`--data.builtin=stdlib-docs`): Python's own documentation.

The default built-in corpus is the generated stories (stories.py): a tiny model learns those visibly
in minutes, while this real prose and code stays noise at that scale. This one is kept as the harder
option: real English and code, still without a download, since every Python installation carries it.

One document per module (its docstring, then the docstrings of its public classes, their methods, and
its functions, in sorted order) plus one document per `pydoc` topic (the language reference pages in
`pydoc_data.topics`). About 1.6 MB of English prose and code examples on CPython 3.11.

Deterministic: a fixed, sorted module list; members sorted by name; only docstrings (no signatures,
whose default values can print memory addresses). Importing modules can have side effects (`this`
prints, `antigravity` opens a browser, GUI toolkits, test suites), so the list leaves those out and the
gathering runs in a separate interpreter: nothing it imports touches the caller's process.

    python -m dist_llm.data.builtin_corpus --cache-dir data_cache   # prints the path of the .txt
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

from dist_llm.data import DOCUMENT_SEPARATOR as SEPARATOR
from dist_llm.utils.atomic_io import atomic_write

CORPUS_VERSION = 1

# Modules whose documentation makes up the corpus. Left out on purpose: modules with import side
# effects (antigravity, this, idlelib, tkinter, turtle, turtledemo), test packages, platform-specific or
# deprecated modules that may be missing or warn, and private modules.
_MODULE_LIST = """
    abc argparse array ast asyncio base64 bdb binascii bisect builtins bz2 calendar cmath cmd code
    codecs codeop collections colorsys compileall concurrent.futures configparser contextlib contextvars
    copy copyreg csv ctypes dataclasses datetime decimal difflib dis doctest email email.message
    email.parser email.policy encodings enum errno faulthandler filecmp fileinput fnmatch fractions
    ftplib functools gc getopt getpass gettext glob graphlib gzip hashlib heapq hmac html html.parser
    http http.client http.cookies http.server imaplib importlib importlib.metadata importlib.resources
    inspect io ipaddress itertools json json.decoder json.encoder keyword linecache locale logging
    logging.config logging.handlers lzma mailbox marshal math mimetypes mmap modulefinder
    multiprocessing multiprocessing.pool netrc numbers operator optparse os os.path pathlib pdb pickle
    pickletools pkgutil platform plistlib poplib pprint profile pstats py_compile pyclbr pydoc queue
    quopri random re reprlib rlcompleter runpy sched secrets select selectors shelve shlex shutil signal
    site smtplib socket socketserver sqlite3 ssl stat statistics string stringprep struct subprocess
    symtable sys sysconfig tabnanny tarfile tempfile textwrap threading time timeit token tokenize
    trace traceback tracemalloc types typing unicodedata unittest unittest.mock urllib.parse
    urllib.request uuid warnings wave weakref webbrowser wsgiref xml.dom xml.dom.minidom xml.etree
    xml.etree.ElementTree xml.sax xmlrpc.client zipapp zipfile zipimport zlib zoneinfo
"""
STDLIB_MODULES = sorted(_MODULE_LIST.split())


def _doc(obj: object) -> str | None:
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    return inspect.cleandoc(doc) if doc and doc.strip() else None


def _public_members(module: object) -> list[tuple[str, object]]:
    """Public classes and functions of the module, sorted by name.

    Members defined in the module, in its submodules (a package re-exporting them) or in its C
    accelerator (`_json` for `json`); not names it merely imported from elsewhere.
    """
    names = getattr(module, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = [n for n in dir(module) if not n.startswith("_")]
    home = module.__name__
    members = []
    for name in sorted({n for n in names if isinstance(n, str)}):
        obj = getattr(module, name, None)
        where = getattr(obj, "__module__", None) or ""
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and (
                where in (home, "_" + home) or where.startswith(home + ".")):
            members.append((name, obj))
    return members


def module_document(name: str) -> str | None:
    """One module's documentation as text, or None when it cannot be imported or has none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except Exception:  # a module missing on this platform or build is simply not part of the corpus
        return None
    parts = [f"Module {name}\n\n{_doc(module) or ''}".rstrip()]
    seen = {_doc(object), _doc(type)}
    for member_name, obj in _public_members(module):
        doc = _doc(obj)
        if doc and doc not in seen:
            seen.add(doc)
            kind = "class" if inspect.isclass(obj) else "function"
            parts.append(f"{kind} {name}.{member_name}\n\n{doc}")
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                method = vars(obj)[attr]
                method_doc = _doc(method) if not attr.startswith("_") and callable(method) else None
                if method_doc and method_doc not in seen:
                    seen.add(method_doc)
                    parts.append(f"method {name}.{member_name}.{attr}\n\n{method_doc}")
    return "\n\n".join(parts) if len(parts) > 1 or _doc(module) else None


def gather_documents(modules: list[str]) -> list[str]:
    """Documents for `modules` (in the given order) followed by all pydoc topics (sorted)."""
    docs = [d for d in (module_document(m) for m in modules) if d]
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    docs += [f"Python reference: {key}\n\n{topics[key].strip()}"
             for key in sorted(topics) if topics[key].strip()]
    # A separator inside a docstring would split a document; none is expected, but never let it through.
    return [d.replace(SEPARATOR, "<|end of text|>") for d in docs]


def _cache_name(modules: list[str]) -> str:
    subset = hashlib.sha256(" ".join(modules).encode()).hexdigest()[:10]
    tag = "" if modules == STDLIB_MODULES else f"_{subset}"
    impl = platform.python_implementation().lower()
    return f"stdlib_docs_{impl}{platform.python_version()}_v{CORPUS_VERSION}{tag}.txt"


def builtin_corpus_path(cache_dir: str | Path, modules: list[str] | None = None) -> Path:
    """Path of the stdlib-docs corpus (.txt, documents separated by <|endoftext|>), gathered on first use.

    `modules` selects a subset (tests use a few small modules); the default is STDLIB_MODULES.
    """
    modules = STDLIB_MODULES if modules is None else list(modules)
    cache_dir = Path(cache_dir)
    path = cache_dir / _cache_name(modules)
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)

    def gather_into(tmp: Path) -> None:
        # A fresh interpreter does the imports, so their side effects stay out of this process.
        cmd = [sys.executable, "-m", "dist_llm.data.builtin_corpus", "--gather", str(tmp),
               "--modules", *modules]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"gathering the stdlib docs corpus failed:\n{proc.stderr[-2000:]}")

    atomic_write(path, gather_into)
    return path


def _write_corpus(out: str, modules: list[str]) -> None:
    docs = gather_documents(modules)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        for doc in docs:
            f.write(doc + "\n" + SEPARATOR + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_llm.data.builtin_corpus",
                                     description="Gather the stdlib-docs corpus and print its path.")
    parser.add_argument("--cache-dir", default="data_cache")
    parser.add_argument("--modules", nargs="+", default=None,
                        help="a subset of modules (default: the full list)")
    # --gather is the worker side of the subprocess that does the imports
    parser.add_argument("--gather", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gather:
        _write_corpus(args.gather, args.modules or STDLIB_MODULES)
        return 0
    print(builtin_corpus_path(args.cache_dir, args.modules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
