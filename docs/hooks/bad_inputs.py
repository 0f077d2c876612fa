"""Render tests/test_bad_inputs.py's CASES (every bad input and the exact message a user sees) into the page that
writes the marker below, so the troubleshooting table is the tested one and cannot drift from it.

The test module is read, not imported: importing it would load torch and build test data for a page.
"""

import ast
import html
import re
from pathlib import Path

MARKER = "<!-- bad-inputs-table -->"
SECTION = re.compile(r"^\s*# -- (.+?) -+$")
HEADER = "| case | `brokenbind: ` ... on stderr, exit code 2 |"
# Characters Markdown would read as table cells, code spans, emphasis or links: shown as the user sees them on stderr.
MARKDOWN_ENTITIES = str.maketrans({c: f"&#{ord(c)};" for c in "|`*_[]\\"})


def cases(source: str) -> list[tuple[str, str, str]]:
    """(section, case id, message) of every ``Case(...)`` in ``CASES``, in the table's order; the section is the
    ``# -- name ---`` comment above the case."""
    lines = source.splitlines()
    table = next(
        node.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CASES" for t in node.targets)
    )
    rows = []
    for call in table.elts:
        section = next(
            (m.group(1) for line in reversed(lines[: call.lineno - 1]) if (m := SECTION.match(line))), "other"
        )
        case_id, _, says = call.args[:3]
        rows.append((section, ast.literal_eval(case_id), ast.literal_eval(says)))
    return rows


def table(rows: list[tuple[str, str, str]]) -> str:
    out, section = [], None
    for name, case_id, says in rows:
        if name != section:
            section = name
            out += [f"\n### {name[0].upper()}{name[1:]}\n", HEADER, "|---|---|"]
        message = html.escape(says).translate(MARKDOWN_ENTITIES)
        out.append(f"| `{case_id}` | {message} |")
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    test = Path(config.config_file_path).parent / "tests" / "test_bad_inputs.py"
    return markdown.replace(MARKER, table(cases(test.read_text())))
