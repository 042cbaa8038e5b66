"""The built-in stories corpus: deterministic, separated, varied, cached; and the default's choice of it."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from dist_llm.config import ConfigError, RunConfig, parse_args
from dist_llm.data import stories
from dist_llm.data.stories import SEPARATOR, generate_stories, stories_corpus_path
from dist_llm.training.pipeline import corpus_files


def test_same_seed_same_stories_other_seed_other_stories():
    first = generate_stories(200, seed=3)
    assert first == generate_stories(200, seed=3)
    assert first[:50] == generate_stories(50, seed=3)  # a prefix of a longer corpus
    other = generate_stories(200, seed=4)
    assert sum(a == b for a, b in zip(first, other, strict=True)) < 5


def test_stories_read_as_english_and_keep_their_cast():
    for text in generate_stories(300, seed=0):
        opening, plot, ending = text.split("\n\n")  # three paragraphs
        assert SEPARATOR not in text and "{" not in text and "  " not in text
        hero = re.search(r"(?:named|called) (\w+)\.|^(\w+) was a", opening)
        name = next(g for g in hero.groups() if g)
        assert name in plot or name in ending  # the hero comes back after the opening
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join([opening, plot, ending])):
            assert sentence[:1].isupper() or sentence[:1] == '"', sentence


def test_corpus_is_varied_but_small_in_vocabulary():
    texts = generate_stories()  # the default corpus
    assert len(texts) == stories.DEFAULT_NUM_STORIES
    assert len(set(texts)) > 0.99 * len(texts)  # not a few stories repeated
    words = re.findall(r"[A-Za-z']+", " ".join(texts))
    assert 300 < len(set(words)) < 1000  # learnable by a tiny model, not a handful of words
    openings = {t.split(".")[0] for t in texts}
    assert len(openings) > 500
    data = "".join(texts).encode()
    assert 1_500_000 < len(data) < 3_000_000  # about one epoch of the default run, no more
    # gzip finds a lot of structure, but not so much that the text is one template
    assert 0.6 < 8 * len(gzip.compress(data, 9)) / len(data) < 2.0


def test_corpus_file_has_one_separator_per_story_and_is_cached(tmp_path):
    path = stories_corpus_path(tmp_path, num_stories=40, seed=1)
    text = path.read_text(encoding="utf-8")
    assert text.count(SEPARATOR) == 40 and text.endswith(f"\n{SEPARATOR}\n")
    assert [d.strip("\n") for d in text.split(SEPARATOR)][:-1] == generate_stories(40, seed=1)
    stamp = path.stat().st_mtime_ns
    assert stories_corpus_path(tmp_path, num_stories=40, seed=1) == path  # reused: same mtime, same tokens
    assert path.stat().st_mtime_ns == stamp
    assert stories_corpus_path(tmp_path, num_stories=40, seed=2) != path


def test_the_default_trains_on_the_stories_and_stdlib_docs_stays_a_choice(tmp_path, monkeypatch):
    cfg = parse_args([f"--run.cache_dir={tmp_path}"])
    assert cfg.data.builtin == RunConfig().data.builtin == "stories"
    [path] = corpus_files(cfg)
    assert path == stories_corpus_path(tmp_path) and path.read_text(encoding="utf-8").startswith(
        generate_stories(1)[0])
    import dist_llm.data.builtin_corpus as stdlib_docs

    monkeypatch.setattr(stdlib_docs, "builtin_corpus_path", lambda cache_dir: Path(cache_dir) / "docs.txt")
    assert corpus_files(parse_args([f"--run.cache_dir={tmp_path}", "--data.builtin=stdlib-docs"])) == [
        tmp_path / "docs.txt"]
    with pytest.raises(ConfigError, match=r"data\.builtin.*stories, stdlib-docs; got 'poems'"):
        parse_args(["--data.builtin=poems"])
