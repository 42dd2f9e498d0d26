"""Names, licences and citations come from manifests and folder sources' own files: the card
and LICENSES.md show them as text, never as HTML, table cells or list items of their own."""

from __future__ import annotations

from inf590k.dataset.card import citation_lines, licenses_text, plain_text, spdx_link

HOSTILE = {
    "id": "my_cam",
    "class_id": 0,
    "name": "Cam | <b>bold</b>",
    "kind": "public",
    "modality": "lwir",
    "samples": 3,
    "license": "MIT <script>alert(1)</script>\nsecond line",
    "license_link": "",
    "homepage": "https://example.org/<x>",
}


def test_a_licence_with_html_and_pipes_stays_one_cell_of_text():
    text = licenses_text([HOSTILE])
    row = text.strip().splitlines()[-1]
    assert row.count("|") == 6  # five cells, no more
    assert "<script>" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; second line" in row
    assert plain_text("a\n\tb  <i>") == "a b &lt;i&gt;"


def test_a_citation_of_several_lines_is_a_code_block_under_its_entry():
    bibtex = "@article{x,\n  title={A | B ```},\n}\n<img src=x onerror=alert(1)>\n| a | b |"
    lines = citation_lines("my_cam", HOSTILE["name"], HOSTILE["homepage"], bibtex)
    assert lines[0] == "- **my_cam**: Cam | &lt;b&gt;bold&lt;/b&gt; (https://example.org/&lt;x&gt;)."
    fence = lines[2].strip().removesuffix("text")
    assert fence == "````" and lines[-1] == f"  {fence}"  # longer than the ``` inside
    body = lines[3:-1]
    assert all(line.startswith("  ") for line in body)  # inside the list item
    assert [line.strip() for line in body] == [line.strip() for line in bibtex.splitlines()]


def test_a_one_line_citation_stays_on_its_entry():
    assert citation_lines("a", "A", "", "Doe et al., 2020.") == ["- **a**: A. Doe et al., 2020."]
    assert citation_lines("a", "A", "", "") == ["- **a**: A. no citation recorded"]


def test_a_licence_given_as_an_spdx_id_links_to_its_text():
    source = dict(HOSTILE, license="CC-BY-NC-4.0", homepage="https://example.org")
    row = licenses_text([source]).strip().splitlines()[-1]
    assert row.endswith("| CC-BY-NC-4.0 | https://spdx.org/licenses/CC-BY-NC-4.0.html |")
    linked = dict(source, license_link="https://example.org/terms")  # the source's own link wins
    assert licenses_text([linked]).strip().endswith("| https://example.org/terms |")
    assert spdx_link("MIT") and spdx_link("GPL-3.0-only") and spdx_link("CC0-1.0")
    assert spdx_link("research only") == "" and spdx_link("CC BY 4.0") == "" and spdx_link("MIT/../x") == ""
