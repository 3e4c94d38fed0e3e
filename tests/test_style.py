"""The layout the repository keeps: ruff's formatting at 120 columns (ruff.toml), which a
formatter cannot enforce for long strings and comments, so this checks every line. Widths are
counted in UTF-8 bytes, the strictest measure: a line of Cyrillic or Chinese that fits 120
characters can still overflow a terminal or a byte-counting tool."""

from conftest import ROOT


def test_no_python_line_is_wider_than_120_bytes():
    wide = [
        f"{path.relative_to(ROOT)}:{number} ({len(line.encode())})"
        for path in sorted(ROOT.glob("**/*.py"))
        if not {".venv", "runs", ".git"} & set(path.relative_to(ROOT).parts)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if len(line.encode()) > 120
    ]
    assert not wide, f"lines over 120 bytes: {', '.join(wide)}"
