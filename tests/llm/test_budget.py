"""The budget gate on perplexity and next-token agreement (evaluate/budget.py), pure: no model."""

from __future__ import annotations

from lathe.api.spec import Budget
from lathe.api.status import CandidateResult
from lathe.evaluate import budget as gate


def _cand(ppl: float, base: float, agreement: float | None) -> CandidateResult:
    return CandidateResult(name="c", metric="perplexity", accuracy=ppl, perplexity=ppl, accuracy_drop=ppl - base,
                           relative_drop=ppl / base - 1, perplexity_increase=ppl / base - 1, token_agreement=agreement)


BASE = CandidateResult(name="baseline", metric="perplexity", accuracy=14.0, perplexity=14.0)


def _fails(c: CandidateResult, b: dict) -> list[str]:
    return gate.accuracy_failures(c, BASE, "perplexity", b) + gate.token_failures(c, b)


def test_defaults_are_two_percent_and_ninety_five_percent_agreement_and_say_so():
    b, notes = gate.effective_budget(Budget(), "perplexity")
    assert b["max_relative_drop"] == 0.02 and b["min_token_agreement"] == 0.95
    assert any("maxPerplexityIncrease=0.02" in n for n in notes)
    assert any("minTokenAgreement=0.95" in n for n in notes)


def test_perplexity_increase_gates_relative_to_the_baseline():
    b, _ = gate.effective_budget(Budget(max_perplexity_increase=0.02, min_token_agreement=0.9), "perplexity")
    assert _fails(_cand(14.2, 14.0, 0.96), b) == []  # +1.4%
    fails = _fails(_cand(14.5, 14.0, 0.96), b)  # +3.6%
    assert len(fails) == 1 and "perplexity" in fails[0] and "relative increase 3.57%" in fails[0]


def test_agreement_gates_even_when_perplexity_holds():
    b, _ = gate.effective_budget(Budget(max_perplexity_increase=0.05, min_token_agreement=0.95), "perplexity")
    fails = _fails(_cand(14.1, 14.0, 0.93), b)
    assert fails == ["next-token agreement 0.930 < 0.950 required (minTokenAgreement)"]
    assert _fails(_cand(14.1, 14.0, 0.951), b) == []
    assert gate.token_failures(_cand(14.1, 14.0, None), b) == ["no next-token agreement measured"]


def test_the_stricter_of_two_relative_limits_holds():
    b, notes = gate.effective_budget(Budget(max_perplexity_increase=0.05, max_relative_drop=0.01), "perplexity")
    assert b["max_relative_drop"] == 0.01
    assert not any("maxPerplexityIncrease" in n for n in notes)
    assert _fails(_cand(14.2, 14.0, 0.99), b)  # +1.4% > 1%


def test_passed_reason_names_the_figures():
    b, _ = gate.effective_budget(Budget(), "perplexity")
    c = _cand(14.1, 14.0, 0.97)
    c.speedup, c.speedup_low, c.speedup_high = 2.3, 2.1, 2.5
    text = gate.passed_reason(c, "perplexity", b)
    assert text.startswith("within budget: perplexity 14.100, +0.71% <= +2.0%, next-token agreement 0.970 >= 0.95")
    assert "speedup 2.30x [2.10, 2.50]" in text
