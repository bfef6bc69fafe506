"""An answer's numbers count as results only when the code's output contains them, to the digits shown."""

from __future__ import annotations

import pytest

from physflow.agents.claims import marked, unproduced_numbers

OUTPUT = "halos heavier than 1e+14 Msun/h: 9\nmean mass [Msun/h]: 41837000000000.0\nfraction: 0.1234\ncount 1234.6\n"


@pytest.mark.parametrize("answer", [
    "9 halos, mean mass 4.2e13 Msun/h",           # rounded
    "mean mass 4.18 x 10^13 Msun/h",             # written out
    "mean mass 4.1837×10**13",
    "12% of them; 12.3% more precisely",         # a fraction as a percentage
    "about 1,235 or 1234 of them",               # separators, rounding, truncation
    "abs_mag_r and (Mpc/h)^3 and t0003 and H0",  # names and exponents are not numbers
    "9 halos heavier than 1e14",                  # the question's own threshold
])
def test_numbers_the_output_backs_are_not_flagged(answer):
    assert unproduced_numbers(answer, OUTPUT, "how many are heavier than 1e14?") == []


@pytest.mark.parametrize("answer, flagged", [
    ("9 halos out of 49", ["49"]),
    ("mean mass 4.3e13 Msun/h", ["4.3e13"]),     # off by more than the last shown digit
    ("fraction 0.13 and 1200 halos", ["0.13"]),  # 1200 is 1234.6 to two digits
])
def test_numbers_the_output_does_not_contain_are_flagged_and_marked(answer, flagged):
    found = unproduced_numbers(answer, OUTPUT)
    assert [s.text for s in found] == flagged
    assert marked(answer, found).count("[not produced by the code]") == len(flagged)
