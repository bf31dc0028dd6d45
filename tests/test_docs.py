"""Every path a docstring or the README points a reader to exists in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*ROOT.joinpath("scq").rglob("*.py"), *ROOT.joinpath("benchmarks").glob("*.py"), ROOT / "README.md"]
REFERENCE = re.compile(r"\b((?:docs|scq|benchmarks|notebooks|tests)/[\w./-]+\.(?:md|py|ipynb|csv|png))")
SECTION = re.compile(r"docs/math\.md §(\d+)")


def test_referenced_files_exist():
    missing = {(src.relative_to(ROOT).as_posix(), ref) for src in SOURCES for ref in REFERENCE.findall(src.read_text())
               if not (ROOT / ref).exists()}
    assert not missing, sorted(missing)


def test_math_sections_cited_exist():
    math = (ROOT / "docs" / "math.md").read_text()
    sections = set(re.findall(r"^## §(\d+)\.", math, flags=re.M))
    cited = {n for src in SOURCES for n in SECTION.findall(src.read_text())}
    assert cited and cited <= sections, cited - sections


def test_no_reference_to_notes_outside_the_repository():
    offenders = [src.relative_to(ROOT).as_posix() for src in SOURCES if re.search(r"(?<!docs/)MATH\.md", src.read_text())]
    assert not offenders, offenders


def test_readme_layout_table_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    modules = [p for p in ROOT.joinpath("scq").rglob("*.py") if p.name != "__init__.py"]
    unnamed = [p.relative_to(ROOT).as_posix() for p in modules if f"{p.name}`" not in layout]
    assert not unnamed, f"modules missing from the README's layout table: {unnamed}"
