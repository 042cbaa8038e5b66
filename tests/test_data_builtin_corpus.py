"""The stdlib-docs corpus: deterministic, cached, separated documents, gathered out of process."""

from __future__ import annotations

import sys

from dist_llm.data.builtin_corpus import SEPARATOR, STDLIB_MODULES, builtin_corpus_path, gather_documents

SUBSET = ["colorsys", "json", "wave"]


def test_subset_corpus_is_deterministic_cached_and_gathered_out_of_process(tmp_path):
    sys.modules.pop("wave", None)
    first = builtin_corpus_path(tmp_path / "a", SUBSET)
    second = builtin_corpus_path(tmp_path / "b", SUBSET)
    assert "wave" not in sys.modules  # the imports happened in a separate interpreter
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text(encoding="utf-8")
    docs = [d.strip("\n") for d in text.split(SEPARATOR)][:-1]
    assert [d.splitlines()[0] for d in docs[:3]] == ["Module colorsys", "Module json", "Module wave"]
    assert "function json.dumps" in docs[1] and "Serialize ``obj``" in docs[1]
    assert len(docs) > 50 and all(d.startswith("Python reference: ") for d in docs[3:])  # pydoc topics
    assert text.endswith(SEPARATOR + "\n")
    stamp = first.stat().st_mtime_ns
    assert builtin_corpus_path(tmp_path / "a", SUBSET) == first and first.stat().st_mtime_ns == stamp


def test_module_list_is_fixed_and_missing_modules_are_skipped():
    assert sorted(STDLIB_MODULES) == STDLIB_MODULES
    assert not {"antigravity", "this", "tkinter", "turtle", "idlelib"} & set(STDLIB_MODULES)
    docs = gather_documents(["no_such_module_xyz", "colorsys"])
    assert docs[0].startswith("Module colorsys") and not docs[1].startswith("Module")
