"""A chunk's failure reaches the caller as ChunkFailedError that is also the chunk's own
exception type when that type is a built-in, so ``except ValueError`` around a start works as it
does in Agently (which re-raises the original exception) after the one-line import switch.

Other types (a user's class, a library's) cannot be rebuilt in the caller's process and stay
plain ChunkFailedError; the type name off the bus is only looked up among the built-ins.
"""

from __future__ import annotations

import asyncio
import builtins

import pytest

from triggerbus import ChunkFailedError, TriggerFlow
from triggerbus.errors import chunk_failed_class

BOUND = 20.0
"""Upper bound for every await in these tests; a healthy run takes a fraction of a second."""


def failing_flow(name: str) -> TriggerFlow:
    flow = TriggerFlow(name=name)

    def boom(data):
        raise ValueError("bad")

    flow.to(boom).end()
    return flow


def assert_bad(error: BaseException, flow: str) -> None:
    """The built-in type, and the ChunkFailedError it was before, message and all."""
    assert isinstance(error, ValueError)
    assert isinstance(error, ChunkFailedError)
    assert str(error) == f"chunk 'boom' of flow {flow!r} raised ValueError: bad"
    assert (error.flow, error.chunk, error.error_type, error.error_message) == (
        flow,
        "boom",
        "ValueError",
        "bad",
    )
    assert 'raise ValueError("bad")' in error.remote_traceback


class MyError(Exception):
    pass


class TestThroughTheApi:
    async def test_except_value_error_catches_a_chunks_value_error_from_flow_async_start(
        self, runtime
    ) -> None:
        with pytest.raises(ValueError) as raised:
            async with asyncio.timeout(BOUND):
                await failing_flow("ft_flow").async_start(1)
        assert_bad(raised.value, "ft_flow")

    async def test_except_value_error_catches_it_from_execution_async_start(
        self, runtime
    ) -> None:
        execution = failing_flow("ft_exec").create_execution(auto_close_timeout=0.0)
        with pytest.raises(ValueError) as raised:
            async with asyncio.timeout(BOUND):
                await execution.async_start(1)
        assert_bad(raised.value, "ft_exec")
        assert raised.value.execution_id == execution.id
        assert execution.get_status() == "failed"

    async def test_a_flow_stream_raises_the_same_value_error_after_its_items(
        self, runtime
    ) -> None:
        with pytest.raises(ValueError) as raised:
            async with asyncio.timeout(BOUND):
                async for _ in failing_flow("ft_stream").get_async_runtime_stream(1, timeout=5):
                    pass
        assert_bad(raised.value, "ft_stream")

    async def test_a_failed_batch_branch_raises_its_runtime_error(self, runtime) -> None:
        flow = TriggerFlow(name="ft_batch")

        def fine(data):
            return 1

        def broken(data):
            raise RuntimeError("branch")

        flow.batch(fine, broken).end()
        with pytest.raises(RuntimeError) as raised:
            async with asyncio.timeout(BOUND):
                await flow.async_start(1)
        assert isinstance(raised.value, ChunkFailedError)
        assert (raised.value.chunk, raised.value.error_message) == ("broken", "branch")

    async def test_require_resource_of_a_missing_key_raises_a_key_error(self, runtime) -> None:
        """Agently raises KeyError; the message stays ChunkFailedError's (KeyError's own
        rendering would quote it)."""
        flow = TriggerFlow(name="ft_resource")

        def need(data):
            return data.require_resource("db")

        flow.to(need).end()
        with pytest.raises(KeyError) as raised:
            async with asyncio.timeout(BOUND):
                await flow.async_start(1)
        error = raised.value
        assert isinstance(error, ChunkFailedError)
        assert (error.chunk, error.error_type) == ("need", "KeyError")
        assert "'db'" in error.error_message
        assert str(error) == (
            f"chunk 'need' of flow 'ft_resource' raised KeyError: {error.error_message}"
        )

    async def test_a_user_defined_exception_stays_a_plain_chunk_failed_error(
        self, runtime
    ) -> None:
        """Only its name travels, and the class may not exist in the caller's process."""
        flow = TriggerFlow(name="ft_mine")

        def mine(data):
            raise MyError("mine")

        flow.to(mine).end()
        with pytest.raises(ChunkFailedError) as raised:
            async with asyncio.timeout(BOUND):
                await flow.async_start(1)
        assert type(raised.value) is ChunkFailedError
        assert (raised.value.error_type, raised.value.error_message) == ("MyError", "mine")



class TestSyncTwins:
    def test_except_value_error_catches_it_from_flow_start(self, sync_runtime) -> None:
        """The probe that found the difference, as a user would write it."""
        try:
            failing_flow("ft_sync").start(1)
        except ValueError as error:
            assert_bad(error, "ft_sync")
        else:
            pytest.fail("flow.start did not raise")

    def test_except_value_error_catches_it_from_execution_start(self, sync_runtime) -> None:
        execution = failing_flow("ft_sync_exec").create_execution(auto_close_timeout=0.0)
        with pytest.raises(ValueError) as raised:
            execution.start(1)
        assert_bad(raised.value, "ft_sync_exec")


COMBINED = [
    "ValueError",
    "KeyError",
    "TypeError",
    "RuntimeError",
    "ZeroDivisionError",
    "LookupError",
    "AttributeError",
    "NotImplementedError",
    "AssertionError",
    "OSError",
    "FileNotFoundError",
    "TimeoutError",
    "RecursionError",
]

PLAIN = [
    # Built-ins that cannot be one: constructors that need more than a message ...
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeTranslateError",
    "ExceptionGroup",
    # ... or that a coroutine or async generator turns into RuntimeError (PEP 479).
    "StopIteration",
    "StopAsyncIteration",
    # Not exceptions, or not Exceptions: never raised as one.
    "SystemExit",
    "KeyboardInterrupt",
    "GeneratorExit",
    "BaseException",
    "Exception",
    "__import__",
    "__loader__",
    "print",
    "object",
    # Names from elsewhere: nothing is imported for them.
    "NotAType",
    "MyError",
    "JSONDecodeError",
    "json.JSONDecodeError",
    "os.error",
    "",
]


class TestChunkFailedClass:
    @pytest.mark.parametrize("name", COMBINED)
    def test_a_builtin_type_gives_a_chunk_failed_error_that_is_also_it(self, name: str) -> None:
        cls = chunk_failed_class(name)
        assert issubclass(cls, ChunkFailedError) and issubclass(cls, getattr(builtins, name))
        error = cls(
            "chunk 'c' of flow 'f' raised it",
            flow="f",
            execution_id="e1",
            chunk="c",
            error_type=name,
            error_message="it",
            remote_traceback="tb",
        )
        assert str(error) == "chunk 'c' of flow 'f' raised it"
        assert error.args == ("chunk 'c' of flow 'f' raised it",)
        assert (error.flow, error.execution_id, error.chunk) == ("f", "e1", "c")
        assert (error.error_type, error.error_message, error.remote_traceback) == (
            name,
            "it",
            "tb",
        )
        assert cls.__name__ == f"ChunkFailedError[{name}]"

    @pytest.mark.parametrize("name", COMBINED)
    def test_each_type_is_built_once(self, name: str) -> None:
        assert chunk_failed_class(name) is chunk_failed_class(name)

    @pytest.mark.parametrize("name", PLAIN)
    def test_any_other_name_off_the_bus_gives_plain_chunk_failed_error(self, name: str) -> None:
        assert chunk_failed_class(name) is ChunkFailedError

    def test_a_class_put_into_builtins_by_someone_else_is_not_used(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Only Python's own built-ins count, not whatever a process added to ``builtins``."""
        monkeypatch.setattr(builtins, "PlantedError", MyError, raising=False)
        assert chunk_failed_class("PlantedError") is ChunkFailedError
