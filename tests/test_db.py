"""Database connections around messages: cleaned up as Django's request cycle does."""

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.db import connection
from pydantic import BaseModel

from cliffracer_core import Service, call, rpc


class Name(BaseModel):
    name: str


class Observed(BaseModel):
    connection_was_open: bool
    count: int


def make_service(service_name: str) -> type[Service]:
    class Groups(Service):
        name = service_name

        @rpc
        def create_in_thread(self, request: Name) -> Observed:
            was_open = connection.connection is not None
            Group.objects.create(name=request.name)
            count = Group.objects.filter(name__startswith="test-").count()
            return Observed(connection_was_open=was_open, count=count)

        @rpc
        async def create_async(self, request: Name) -> Observed:
            was_open = await sync_to_async(lambda: connection.connection is not None)()
            await Group.objects.acreate(name=request.name)
            count = await Group.objects.filter(name__startswith="test-").acount()
            return Observed(connection_was_open=was_open, count=count)

    return Groups


@pytest.mark.django_db(transaction=True)
def test_def_handlers_use_the_orm_and_close_connections_after_each_message(
    start_service, unique_name
):
    start_service(make_service(unique_name), threads=1)
    replies = [call(f"{unique_name}.create_in_thread", {"name": f"test-g{i}"}) for i in range(3)]
    assert [reply["count"] for reply in replies] == [1, 2, 3]
    # With CONN_MAX_AGE = 0 each message finds its thread's connection closed, as a request does.
    assert not any(reply["connection_was_open"] for reply in replies)
    names = set(Group.objects.filter(name__startswith="test-").values_list("name", flat=True))
    assert names == {"test-g0", "test-g1", "test-g2"}


@pytest.mark.django_db(transaction=True)
def test_async_handlers_use_the_async_orm_and_close_connections(start_service, unique_name):
    start_service(make_service(unique_name))
    replies = [call(f"{unique_name}.create_async", {"name": f"test-a{i}"}) for i in range(3)]
    assert [reply["count"] for reply in replies] == [1, 2, 3]
    assert not any(reply["connection_was_open"] for reply in replies[1:])


@pytest.mark.django_db(transaction=True)
def test_a_broken_connection_does_not_break_the_next_message(start_service, unique_name):
    running = start_service(make_service(unique_name), threads=1)
    call(f"{unique_name}.create_in_thread", {"name": "test-first"})

    def break_connection():
        # Leave a dead connection behind in the worker thread, as a database restart would.
        connection.ensure_connection()
        connection.connection.close()

    running.runner.executor.submit(break_connection).result(5)
    reply = call(f"{unique_name}.create_in_thread", {"name": "test-second"})
    assert reply["count"] == 2
