"""The layout the repository keeps: ruff's formatting at 120 columns (ruff.toml), which a
formatter cannot enforce for long strings and comments, so this checks every line."""

from conftest import ROOT


def test_no_python_line_is_wider_than_120_characters():
    wide = [
        f"{path.relative_to(ROOT)}:{number} ({len(line)})"
        for path in sorted(ROOT.glob("**/*.py"))
        if not {".venv", "runs", ".git"} & set(path.relative_to(ROOT).parts)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if len(line) > 120
    ]
    assert not wide, f"lines over 120 characters: {', '.join(wide)}"
