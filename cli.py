"""
The command-line conventions of every script here (distill.py, joint_train.py,
evaluate.py, data.py):

- bad input ends with one `error: ...` line and exit status 1, never a traceback:
  `Parser` reports argument errors that way, and `entry_point(main)` turns a BadInput
  raised anywhere into that line;
- every numeric flag is typed with its valid range (`Range`), so a value outside
  it, nan or inf is refused where it is parsed, naming the flag and the range;
- --help keeps the script's docstring as written and shows every default;
- Ctrl-C says what is left and how to go on, not a traceback.
"""

import argparse
import math
import sys


class BadInput(ValueError):
    """Input the user can fix: the message names the file, line or argument and what was expected."""


def first_line(error):
    """An exception's message cut to its first line (library errors can run to pages), or its type."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class Range:
    """An argparse type for a number in a range, so every numeric flag states its own:

        parser.add_argument("--lam", type=Range(float, 0, 1), ...)

    low/high are inclusive bounds unless open_low/open_high; None is unbounded. nan
    and infinities are refused everywhere (no flag means them).
    """

    def __init__(self, kind, low=None, high=None, open_low=False, open_high=False):
        self.kind, self.low, self.high, self.open_low, self.open_high = kind, low, high, open_low, open_high

    def __call__(self, text):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None
        return self.check(value, text)

    def check(self, value, shown=None):
        """value itself if it is a number in the range, else ArgumentTypeError saying which
        range and what was given (`shown`: the text it was parsed from, if any)."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        in_range = number and math.isfinite(value) and (self.kind is not int or value == int(value))
        if in_range and self.low is not None:
            in_range = value > self.low if self.open_low else value >= self.low
        if in_range and self.high is not None:
            in_range = value < self.high if self.open_high else value <= self.high
        if not in_range:
            given = repr(value if shown is None else shown)
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {given}")
        return self.kind(value)

    def describe(self):
        """'an integer >= 1', 'a number in [0, 1]', 'a number > 0', ..."""
        what = "an integer" if self.kind is int else "a number"
        low, high = (f"{bound:g}" if isinstance(bound, float) else str(bound) for bound in (self.low, self.high))
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{what} in {left}{low}, {high}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.open_low else '>='} {low}"
        if self.high is not None:
            return f"{what} {'<' if self.open_high else '<='} {high}"
        return f"a finite {what[3:] if self.kind is int else 'number'}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help, and the description (the script's docstring) kept as written."""


class Parser(argparse.ArgumentParser):
    """argparse with the repository's error convention: one `error:` line, exit status 1.

    subtle: argparse itself prints the usage and exits with 2; a script's users
    (and its tests) rely on 1 for every refusal, whichever layer refuses.
    """

    def __init__(self, description=None, **kwargs):
        super().__init__(description=description, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        sys.exit(f"error: {message}")


# Functions that say, after Ctrl-C, what the user can do next, by what they speak for
# (a training run's names the checkpoint --resume continues from); each returns a line or None.
interrupt_hints = {}


def entry_point(main):
    """Call main() as a script's entry point: a BadInput becomes its one `error:` line and
    exit status 1; Ctrl-C prints what the interrupted work left (no traceback) and exits
    with 130, the shell's status for an interrupt."""
    try:
        main()
    except BadInput as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        # the innermost work first: the interrupted run's checkpoint, then the sweep around it
        lines = [line for line in (hint() for hint in reversed(interrupt_hints.values())) if line]
        print("\n".join(lines) or "interrupted", file=sys.stderr)
        sys.exit(130)
