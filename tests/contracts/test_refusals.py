"""How a reader tells a refusal's kind from its ``error_type``, in today's form and the form
a host of the previous release sends during a rolling upgrade."""

from __future__ import annotations

import pytest

from triggerbus.contracts.messages import ErrorInfo, refuses_unknown_execution


class TestUnknownExecution:
    @pytest.mark.parametrize(
        "error",
        [
            ErrorInfo(error_type="ExecutionNotFoundError", message="no execution 'e1'"),
            ErrorInfo(error_type="ContractError", message="no execution 'e1'"),  # older hosts
        ],
        ids=["today", "previous-release"],
    )
    def test_both_forms_say_the_execution_does_not_exist(self, error: ErrorInfo) -> None:
        assert refuses_unknown_execution(error)

    @pytest.mark.parametrize(
        "error",
        [
            None,
            ErrorInfo(error_type="ContractError", message="flow fingerprint mismatch: ..."),
            ErrorInfo(error_type="InterruptNotFoundError", message="no execution-like text"),
            ErrorInfo(error_type="ValueError", message="no execution here", chunk="c"),
        ],
        ids=["no-error", "other-contract-error", "other-type", "a-chunks-own-error"],
    )
    def test_other_refusals_do_not(self, error: ErrorInfo | None) -> None:
        """Only a ``ContractError`` may carry the old form: the text of any other type, a
        chunk's own error above all, is no signal."""
        assert not refuses_unknown_execution(error)
