"""The docs point at things that exist: relative links (and their #anchors) in README.md and docs/*.md,
the `python bench/X.py` and `python -m dist_llm.X` commands they show, the scripts and configs they name,
and the README's test command, which CI (.ci/run) runs word for word."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
BENCH_COMMAND = re.compile(r"\bpython3?\s+(bench/[\w./-]+\.py)\b")
MODULE_COMMAND = re.compile(r"(?:^|\s)-m\s+(dist_llm(?:\.\w+)*)")
NAMED_FILE = re.compile(r"(?<![\w./-])((?:bench|launch|slurm|configs|\.ci)/[\w.-]+\.(?:py|sh|toml|yaml))\b")


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside code blocks and code spans, where a [text](target) is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def broken_links(files: list[Path], root: Path = ROOT) -> list[str]:
    """'FILE: target (why)' for every relative link whose file or #anchor does not exist."""
    problems = []
    for md in files:
        for target in LINK.findall(_prose(md.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (md.parent / path_part).resolve() if path_part else md
            where = f"{md.relative_to(root)}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} (no heading #{anchor} in {dest.name})")
    return problems


def module_exists(module: str, root: Path = ROOT) -> bool:
    """`python -m MODULE` can run from this tree: MODULE.py, or a package with a __main__.py."""
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()


def missing_commands(files: list[Path], root: Path = ROOT) -> list[str]:
    """'FILE: what' for every bench script, `-m dist_llm...` module, script or config named but absent."""
    problems = []
    for md in files:
        text = md.read_text(encoding="utf-8")
        name = md.relative_to(root)
        for script in sorted(set(BENCH_COMMAND.findall(text)) | set(NAMED_FILE.findall(text))):
            if not (root / script).is_file():
                problems.append(f"{name}: {script} (no such file)")
        for module in sorted(set(MODULE_COMMAND.findall(text))):
            if not module_exists(module, root):
                problems.append(f"{name}: python -m {module} (no such module)")
    return problems


def test_every_relative_link_points_to_an_existing_file_and_heading():
    assert broken_links(doc_files()) == []


def test_every_command_script_and_config_named_in_the_docs_exists():
    assert missing_commands(doc_files()) == []


def test_the_readme_shows_the_test_command_ci_runs():
    ci_line = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci_line == "bash install.sh test && python -m ruff check . && python -m pytest -q"
    assert ci_line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()


def test_the_checks_find_broken_links_anchors_and_commands(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "real.py").write_text("")
    (tmp_path / "dist_llm" / "tool").mkdir(parents=True)
    (tmp_path / "dist_llm" / "train.py").write_text("")
    (tmp_path / "dist_llm" / "tool" / "__main__.py").write_text("")
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## How it `works`, briefly\n")
    (tmp_path / "README.md").write_text(
        "# Readme\n\n[ok](docs/page.md) [anchor ok](docs/page.md#how-it-works-briefly) [self](#readme)\n"
        "[web](https://example.org/x) `[not a link](nowhere.md)`\n"
        "[gone](docs/missing.md) and [bad anchor](docs/page.md#nope)\n\n"
        "```bash\npython bench/real.py && python -m dist_llm.train && python -m dist_llm.tool\n"
        "python bench/fake.py\ntorchrun --nproc_per_node=2 -m dist_llm.nothing\nsbatch slurm/gone.sh\n"
        "[inside code](ignored.md)\n```\n")
    files = doc_files(tmp_path)
    assert broken_links(files, tmp_path) == [
        "README.md: docs/missing.md (no such file)",
        "README.md: docs/page.md#nope (no heading #nope in page.md)",
    ]
    assert missing_commands(files, tmp_path) == [
        "README.md: bench/fake.py (no such file)",
        "README.md: slurm/gone.sh (no such file)",
        "README.md: python -m dist_llm.nothing (no such module)",
    ]


def test_config_reference_in_the_docs_is_current() -> None:
    """docs/training.md's key table is generated from dist_llm/config/__init__.py; a key added, renamed or
    redescribed there without regenerating the page fails here."""
    from dist_llm.config.help import with_reference

    page = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert page == with_reference(page), (
        "docs/training.md's config reference is stale: run python -m dist_llm.config.help docs/training.md")
    assert "`train.activation_checkpointing`" in page and "`dist.strategy`" in page
