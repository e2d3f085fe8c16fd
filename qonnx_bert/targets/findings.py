"""What a target check found: per-node findings with the fix, and summary lines."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    """One node that does not run as the QDQ graph says, why, and how to fix it."""

    node: str
    op_type: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"FAIL {self.node} ({self.op_type}): {self.problem} -> fix: {self.fix}"


@dataclass
class CheckReport:
    """The outcome of ``qonnx check``: ``ok`` when there is no finding.

    ``summary`` holds facts that hold either way (node counts, kernels used);
    ``unverified`` says what this check cannot establish without hardware.
    """

    target: str
    findings: list[Finding] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    unverified: str = ""

    @property
    def ok(self) -> bool:
        return not self.findings

    def lines(self) -> list[str]:
        verdict = "PASS" if self.ok else f"FAIL ({len(self.findings)} problem{'s' * (len(self.findings) != 1)})"
        out = [f"{self.target}: {verdict}", *self.summary, *(f.line() for f in self.findings)]
        return out + ([f"not verified here: {self.unverified}"] if self.unverified else [])
