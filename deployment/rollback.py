"""Rollback of a blue/green deploy, and every hint it gives, in one place.

Once the new deployment (an Azure deployment or a local server) exists, each later step runs
inside `with rollback.guard("the smoke test"):`. If the step fails, the evidence (container
log, server log) is shown, the new deployment is removed, traffic stays where it was, and one
UserError says what failed, what was undone and, if the undo failed, the command to finish it.
The evaluation gate's refusal goes through the same path (`rollback.refuse(verdict)`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from common.cli import UserError, first_line, say

if TYPE_CHECKING:  # pragma: no cover
    from deployment.gate import Verdict


@dataclass
class Rollback:
    name: str
    """The new deployment, in words: "deployment green on endpoint phi3-chat-x"."""
    undo: Callable[[], bool]
    """Remove the new deployment; True when it is gone (or never existed)."""
    manual: str
    """The command that removes it by hand, for when `undo` fails or the user pressed Ctrl-C."""
    kept: str
    """What keeps serving: "Traffic was not moved (blue=100%)."."""
    evidence: Callable[[], str] | None = None
    """Shown before the undo (the container or server log), best effort."""
    hint: Callable[[str], str] = lambda detail: ""
    """A next step that fits the failure's detail (quota, image build ...)."""
    removed: str = "deleted"
    """The past tense of `undo` in messages ("deleted", "stopped")."""
    undo_on_interrupt: bool = False
    secret: str | None = None
    """Redacted from every line this prints (the endpoint key, once fetched)."""

    def redact(self, text: str) -> str:
        return text.replace(self.secret, "<hidden>") if self.secret else text

    @contextmanager
    def guard(self, stage: str) -> Iterator[None]:
        """Run one step; on failure undo the new deployment and raise one UserError."""
        try:
            yield
        except KeyboardInterrupt:
            if self.undo_on_interrupt:
                self.undo()
                say(f"interrupted during {stage}: {self.name} was removed. {self.kept}")
            else:
                say(f"interrupted during {stage}: {self.name} may still be running and bill per hour; "
                    f"remove it with {self.manual}. {self.kept}")
            raise
        except Exception as err:
            detail = str(err) if isinstance(err, UserError) else first_line(err)
            raise self.fail(stage, detail) from None

    def fail(self, stage: str, detail: str) -> UserError:
        detail = self.redact(detail).rstrip().rstrip(".")
        say(f"!!! {stage} failed: {detail}")
        return UserError(f"{stage} failed for {self.name}: {detail}. {self._undo(evidence=True)}{self.hint(detail)}")

    def refuse(self, verdict: "Verdict") -> UserError:
        """The gate's refusal: the new deployment is removed, the table was shown, non-zero exit."""
        say(f"!!! refused: {verdict.summary()}")
        return UserError(
            f"{self.name} was refused: {verdict.summary()}. {self._undo(evidence=False)} Scores per conversation: "
            f"{verdict.new_json}. To move traffic anyway, re-run deploy with --force (see docs/DEPLOY.md, "
            "'The evaluation gate')."
        )

    def _undo(self, *, evidence: bool) -> str:
        """Remove the new deployment (after showing its log when it failed); the sentence saying so."""
        say(f"    {self.kept}")
        if evidence and self.evidence is not None:
            try:
                text = self.evidence()
            except Exception as err:  # a failed log fetch must not hide the real failure
                text = f"(could not read the log: {first_line(err)})"
            if text:
                say(self.redact(text))
        say(f"    removing {self.name}")
        gone = self.undo()
        cleanup = (f"{self.name[0].upper()}{self.name[1:]} was {self.removed}." if gone
                   else f"{self.name} could NOT be removed and may bill per hour: remove it with {self.manual}.")
        return f"{self.kept} {cleanup}"
