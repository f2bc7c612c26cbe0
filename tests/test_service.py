"""The service model: decorators and what a Service class reads from its methods."""

import pytest

from cliffracer_core import Service, event, rpc, timer
from tests.models import Add, Happened, Total


class Example(Service):
    """Adds things.

    More words that are not the description.
    """

    @rpc
    async def add(self, request: Add) -> Total:
        """Add two numbers."""
        return Total(total=request.a + request.b)

    @rpc(name="plus")
    def add_again(self, request: Add) -> Total:
        return Total(total=request.a + request.b)

    @rpc
    async def nothing(self) -> None:
        return None

    @event("things.*")
    async def on_thing(self, happened: Happened) -> None:
        pass

    @event("things.>", broadcast=True)
    def on_any(self, happened: Happened) -> None:
        pass

    @timer(seconds=30)
    async def sweep(self) -> None:
        pass


def test_names_version_and_description():
    assert Example.service_name() == "example"
    assert Example.service_version() == "0.1.0"
    assert Example.service_description() == "Adds things."


def test_rpcs_events_and_timers_are_read_from_the_methods():
    rpcs = Example.rpcs()
    assert set(rpcs) == {"add", "plus", "nothing"}
    assert rpcs["add"].request_model is Add and rpcs["add"].reply_model is Total
    assert rpcs["add"].is_async and not rpcs["plus"].is_async
    assert rpcs["plus"].attribute == "add_again"
    assert rpcs["nothing"].request_model is None and rpcs["nothing"].reply_model is None
    assert rpcs["add"].description == "Add two numbers."
    events = {e.attribute: e for e in Example.events()}
    assert events["on_thing"].subject == "things.*" and not events["on_thing"].broadcast
    assert events["on_any"].broadcast and events["on_any"].model is Happened
    assert [(t.attribute, t.seconds) for t in Example.timers()] == [("sweep", 30.0)]


def test_subclasses_inherit_and_override_handlers():
    class Extended(Example):
        @rpc
        async def add(self, request: Add) -> Total:
            return Total(total=0)

    assert set(Extended.rpcs()) == {"add", "plus", "nothing"}
    assert Extended.rpcs()["add"].is_async


def test_handlers_must_take_one_model():
    class TwoArguments(Service):
        @rpc
        async def bad(self, a: Add, b: Add) -> Total: ...

    with pytest.raises(TypeError, match="more than one argument"):
        TwoArguments.rpcs()

    class NotAModel(Service):
        @rpc
        async def bad(self, a: int) -> Total: ...

    with pytest.raises(TypeError, match="pydantic model"):
        NotAModel.rpcs()

    class BadReturn(Service):
        @rpc
        async def bad(self, a: Add) -> dict: ...

    with pytest.raises(TypeError, match="return"):
        BadReturn.rpcs()


def test_decorator_arguments_are_checked():
    with pytest.raises(ValueError):
        timer(seconds=0)
    with pytest.raises(ValueError):
        event("has space")
