"""The exceptions hubsdd raises on purpose.

Every error a user can cause or fix is a :class:`HubsddError`: it carries a message that says what
is wrong (naming the YAML path or file) and, where there is one, the fix. The CLI formats them in
one place (:func:`hubsdd.cli.main`); library users catch them like any other exception.
"""

from __future__ import annotations


class HubsddError(Exception):
    """Base class. ``fix`` is a sentence or command that resolves the problem."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class RecipeError(HubsddError):
    """The recipe file is unreadable or invalid; ``problems`` holds one line per error."""

    exit_code = 2

    def __init__(self, path: str, problems: list[str], *, fix: str | None = None) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "error" if len(problems) == 1 else "errors"
        super().__init__(f"{path}: {len(problems)} {noun}\n{lines}", fix=fix)


class DataError(HubsddError):
    """A dataset or data file cannot be read or lacks the columns the recipe names."""


class ModelLoadError(HubsddError):
    """A model cannot be found or loaded."""


class UnsafeModelError(ModelLoadError):
    """Loading would run remote code or unpickle weights, and the recipe did not allow it."""


class UnsupportedArchitectureError(HubsddError):
    """Layer surgery does not know this architecture."""


class StageError(HubsddError):
    """A stage cannot run: a missing input, or a run directory in an unexpected state."""


class OutOfMemoryError(StageError):
    """A stage ran out of (GPU or host) memory."""


class HubError(HubsddError):
    """Talking to the Hub failed."""


class AuthError(HubError):
    """No token, or the token was refused."""


class RepoConflictError(HubError):
    """The target repository holds files hubsdd did not create."""


class VerificationError(HubError):
    """A downloaded checkpoint does not match what its card says."""


class SigningError(HubError):
    """A release cannot be signed (no key, an unreadable key, no OIDC credentials): nothing was uploaded."""


class SignerChangedError(VerificationError):
    """A release is signed by someone other than the signer pinned for its repository."""


class TeacherLogitsMismatchError(StageError):
    """Stored teacher log-probabilities were computed by another teacher or tokenizer than this run's;
    ``stored`` and ``expected`` name both."""

    def __init__(self, what: str, stored: str, expected: str, *, where: str, fix: str | None = None) -> None:
        self.what, self.stored, self.expected = what, stored, expected
        super().__init__(f"{where}: the teacher log-probabilities there were computed with {what} {stored}, "
                         f"but this run's {what} is {expected}; refusing to distill from them", fix=fix)
