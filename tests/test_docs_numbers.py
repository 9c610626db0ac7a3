"""The published numbers cannot go stale: docs/benchmarks.md and the README's results are rendered from the results
JSON files (bench/render_docs.py), and a number written by hand outside a rendered region is refused."""

import re
import shutil

import pytest

from bench import render_docs

ROOT = render_docs.ROOT
# Outside the rendered regions these may hold numbers: code (commands with their values, file and test names).
CODE = re.compile(r"```.*?```|`[^`]+`", re.S)
# A number: digits not inside a word or a hyphenated name (bf16, all-MiniLM-L6-v2 and SmolLM2-135M are names).
NUMBER = re.compile(r"(?<![\w.])(?<!\w-)\d[\d.,]*")


def hand_written_numbers(text: str) -> list[str]:
    prose = CODE.sub("", render_docs.REGION.sub("", text))
    return [line.strip() for line in prose.splitlines() if NUMBER.search(line)]


@pytest.mark.unit
def test_every_results_region_in_the_docs_is_what_its_json_renders():
    docs = [ROOT / d for d in render_docs.DOCS if (ROOT / d).is_file()]
    assert any(render_docs.REGION.search(doc.read_text()) for doc in docs)
    stale = {str(doc.relative_to(ROOT)): render_docs.stale_regions(doc) for doc in docs}
    assert not any(stale.values()), f"run `python -m bench.render_docs`: {stale}"


@pytest.mark.unit
def test_benchmarks_page_has_no_number_written_by_hand():
    assert hand_written_numbers((ROOT / "docs/benchmarks.md").read_text()) == []


@pytest.mark.unit
def test_rules_page_has_no_number_written_by_hand():
    assert hand_written_numbers((ROOT / "docs/rules.md").read_text()) == []


@pytest.mark.unit
def test_a_changed_number_or_a_hand_written_one_is_caught(tmp_path):
    doc = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs/benchmarks.md", doc)
    text = doc.read_text()
    region = render_docs.REGION.search(text[text.index("<!-- results: hh_rlhf_check -->") :])
    edited = region.group(0).replace("0.", "0.9", 1)  # one published accuracy changed by hand
    doc.write_text(text.replace(region.group(0), edited))
    assert render_docs.stale_regions(doc) == ["hh_rlhf_check"]
    assert render_docs.render_text(doc.read_text()) == text  # rendering puts the JSON's number back
    assert hand_written_numbers(text + "\nMiniLM now scores 0.61 on SmolLM2-135M data.\n") == [
        "MiniLM now scores 0.61 on SmolLM2-135M data."
    ]


@pytest.mark.unit
def test_an_unknown_region_name_is_an_error_naming_the_known_ones():
    with pytest.raises(SystemExit, match="unknown results region 'hh_typo'.*hh_rlhf_check"):
        render_docs.render_text("<!-- results: hh_typo -->\n<!-- /results -->\n", "doc.md")


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


@pytest.mark.unit
def test_the_readme_results_and_recipe_have_no_number_written_by_hand():
    for title in ("Results in brief", "A first reward model on a laptop"):
        section = readme_section(title)
        assert render_docs.REGION.search(section), title
        assert hand_written_numbers(section) == [], title


@pytest.mark.unit
def test_the_readme_recipe_is_the_one_that_was_run_and_timed():
    from bench.small_data_recipe import recipe_commands

    ran = [run["command"] for run in render_docs.load("small_data_recipe")["results"]["runs"]]
    assert ran == recipe_commands(), "the README's recipe changed since it was run: python -m bench.small_data_recipe"
