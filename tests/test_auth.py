"""One identity on NATS: tokens checked before the body, permissions, the caller, onward calls."""

import json
import subprocess
import sys
import time

import nats
import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import RequestFactory, override_settings
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from cliffracer_core import (
    PermissionDenied,
    Service,
    call,
    event,
    publish,
    rpc,
    timer,
)
from cliffracer_core.contrib.monitor.records import errors_subject
from cliffracer_core.contrib.rest.middleware import CorrelationIdMiddleware
from cliffracer_core.core.auth.identity import get_caller
from cliffracer_core.core.auth.tokens import (
    claims_for_user,
    jwt_settings,
    system_identity,
    verifier,
)
from cliffracer_core.core.errors import NotAuthenticatedError
from cliffracer_core.testing import wait_for
from cliffracer_core.testing.plugin import project_root, run_async
from tests.models import Add, Happened, Tagged, Total, Wait


def access_token(user: User) -> str:
    token = AccessToken.for_user(user)
    for name, value in claims_for_user(user).items():
        token[name] = value
    return str(token)


def bearer(user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token(user)}"}


class Seen(Tagged):
    username: str = ""
    permissions: list[str] = []
    is_system: bool = False


def make_service(service_name: str) -> type[Service]:
    class Guarded(Service):
        name = service_name

        def __init__(self) -> None:
            self.ran = 0
            self.events: list[Seen] = []
            self.ticks: list[Seen] = []

        @rpc(permission="auth.view_user")
        async def guarded(self, request: Add) -> Total:
            self.ran += 1
            return Total(total=request.a + request.b)

        @rpc(permission=["auth.view_user", "auth.change_user"])
        async def doubly_guarded(self, request: Add) -> Total:
            self.ran += 1
            return Total(total=0)

        @rpc
        async def whoami(self, request: Wait) -> Seen:
            caller = self.caller
            return Seen(
                tag=request.tag,
                username=caller.username,
                permissions=sorted(caller.permissions),
                is_system=caller.is_system,
            )

        @rpc
        async def relay(self, request: Wait) -> Seen:
            # The original caller's token travels onward.
            return await self.call(f"{service_name}.whoami", request, reply=Seen)

        @rpc(public=True)
        async def anyone(self, request: Wait) -> Seen:
            caller = get_caller()
            return Seen(tag=request.tag, username=caller.username if caller else "")

        @event(f"{service_name}.happened")
        async def on_happened(self, happened: Happened) -> None:
            caller = self.caller
            self.events.append(Seen(tag=0, username=caller.username if caller else ""))

        @timer(seconds=0.1, immediate=True)
        async def tick(self) -> None:
            if len(self.ticks) < 2:
                seen = await self.call(f"{service_name}.whoami", {"tag": 1}, reply=Seen)
                self.ticks.append(seen)

    return Guarded


@pytest.fixture
def users(transactional_db):
    viewer = User.objects.create_user("viewer", password="x")
    viewer.user_permissions.add(Permission.objects.get(codename="view_user"))
    plain = User.objects.create_user("plain", password="x")
    group = Group.objects.create(name="test-admins")
    group.permissions.add(*Permission.objects.filter(codename__in=["view_user", "change_user"]))
    admin = User.objects.create_user("groupie", password="x")
    admin.groups.add(group)
    boss = User.objects.create_superuser("boss", password="x")
    return {"viewer": viewer, "plain": plain, "groupie": admin, "boss": boss}


@pytest.fixture
def guarded(start_service, unique_name):
    running = start_service(make_service(unique_name))
    return unique_name, running


async def raw(url, subject, body=b"{}", headers=None):
    connection = await nats.connect(url)
    try:
        return await connection.request(subject, body, timeout=5, headers=headers)
    finally:
        await connection.close()


def test_missing_token_is_401_before_the_body_is_read(nats_server, guarded):
    name, running = guarded
    reply = run_async(raw(nats_server.url, f"rpc.{name}.guarded", b"{not even json"))
    assert reply.headers["Nats-Service-Error-Code"] == "401"
    assert json.loads(reply.data)["error"]["type"] == "not_authenticated"
    assert running.service.ran == 0


def test_permissions_decide_403_or_success(guarded, users):
    name, running = guarded
    with pytest.raises(PermissionDenied) as raised:
        call(f"{name}.guarded", {"a": 1, "b": 2}, headers=bearer(users["plain"]))
    assert raised.value.details == {"missing_permissions": ["auth.view_user"]}
    assert call(f"{name}.guarded", {"a": 1, "b": 2}, headers=bearer(users["viewer"])) == {
        "total": 3
    }
    # Several permissions: all are required; a group's permissions count, a superuser passes.
    with pytest.raises(PermissionDenied):
        call(f"{name}.doubly_guarded", {"a": 1, "b": 2}, headers=bearer(users["viewer"]))
    call(f"{name}.doubly_guarded", {"a": 1, "b": 2}, headers=bearer(users["groupie"]))
    call(f"{name}.doubly_guarded", {"a": 1, "b": 2}, headers=bearer(users["boss"]))
    assert running.service.ran == 3


def test_a_refusal_names_no_user_in_the_reply_stats_or_error_records(
    nats_server, guarded, django_user_model
):
    # $SRV.STATS and the error records are readable by every NATS client: who was refused is
    # nobody else's business.
    name, _ = guarded
    headers = bearer(django_user_model.objects.create_user("plainstaff", password="x"))

    async def refused_then_stats():
        connection = await nats.connect(nats_server.url)
        try:
            records = await connection.subscribe(errors_subject(name))
            reply = await connection.request(
                f"rpc.{name}.guarded", b'{"a": 1, "b": 2}', timeout=5, headers=headers
            )
            record = await records.next_msg(timeout=5)
            answer = await connection.request(f"$SRV.STATS.{name}", b"", timeout=5)
            stats = [json.loads(answer.data)]
        finally:
            await connection.close()
        return reply, record, stats

    reply, record, [stats] = run_async(refused_then_stats())
    assert reply.headers["Nats-Service-Error-Code"] == "403"
    [endpoint] = [e for e in stats["endpoints"] if e["name"] == "guarded"]
    assert endpoint["last_error"] == f"403:The caller may not call {name}.guarded."
    for text in (reply.headers["Nats-Service-Error"], reply.data, record.data):
        assert "plainstaff" not in str(text)
    assert "plainstaff" not in json.dumps(stats)


def test_the_handler_sees_the_caller_and_calls_carry_it_onward(guarded, users):
    name, _ = guarded
    seen = call(f"{name}.relay", {"tag": 5}, headers=bearer(users["viewer"]), reply=Seen)
    assert (seen.username, seen.permissions, seen.is_system) == (
        "viewer",
        ["auth.view_user"],
        False,
    )


def test_scripts_act_as_the_system_identity_which_is_no_superuser(guarded):
    name, _ = guarded
    seen = call(f"{name}.whoami", {"tag": 1}, reply=Seen)
    assert seen.is_system and seen.username == "system"
    with pytest.raises(PermissionDenied):
        call(f"{name}.guarded", {"a": 1, "b": 1})
    with override_settings(
        CLIFFRACER={"SYSTEM_IDENTITY": {"username": "robot", "permissions": ["auth.view_user"]}}
    ):
        system_identity.token = None  # mint anew with the changed identity
        try:
            assert call(f"{name}.guarded", {"a": 1, "b": 1}) == {"total": 2}
            assert call(f"{name}.whoami", {"tag": 1}, reply=Seen).username == "robot"
        finally:
            system_identity.token = None


def test_timers_act_as_the_system_identity(guarded):
    _, running = guarded
    deadline = time.monotonic() + 5
    while len(running.service.ticks) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(s.username, s.is_system) for s in running.service.ticks] == [("system", True)] * 2


def test_public_endpoints_need_no_token_but_refuse_a_bad_one(nats_server, guarded, users):
    name, _ = guarded
    reply = run_async(raw(nats_server.url, f"rpc.{name}.anyone", b'{"tag": 3}'))
    assert json.loads(reply.data) == {
        "tag": 3,
        "instance": "",
        "correlation_id": None,
        "username": "",
        "permissions": [],
        "is_system": False,
    }
    assert call(f"{name}.anyone", {"tag": 1}, headers=bearer(users["plain"]))["username"] == "plain"
    with pytest.raises(NotAuthenticatedError):
        call(f"{name}.anyone", {"tag": 1}, headers={"Authorization": "Bearer not-a-token"})


def test_default_access_can_be_public(start_service, unique_name, nats_server):
    with override_settings(CLIFFRACER={"DEFAULT_RPC_ACCESS": "public"}):
        start_service(make_service(unique_name))
    reply = run_async(raw(nats_server.url, f"rpc.{unique_name}.whoami", b'{"tag": 2}'))
    # whoami dereferences the caller; with no token it has none, which is a handler bug (500),
    # not a 401: the endpoint was public.
    assert reply.headers["Nats-Service-Error-Code"] == "500"
    guarded = run_async(raw(nats_server.url, f"rpc.{unique_name}.guarded", b'{"a":1,"b":1}'))
    assert guarded.headers["Nats-Service-Error-Code"] == "401"


def test_refresh_tokens_are_not_access_tokens(guarded, users):
    name, _ = guarded
    refresh = str(RefreshToken.for_user(users["viewer"]))
    with pytest.raises(NotAuthenticatedError) as raised:
        call(f"{name}.whoami", {"tag": 1}, headers={"Authorization": f"Bearer {refresh}"})
    assert raised.value.message == "Only access tokens are accepted."


def test_events_tell_the_handler_who_published(guarded, users):
    name, running = guarded
    publish(f"{name}.happened", {"what": "x"}, headers=bearer(users["viewer"]))
    deadline = time.monotonic() + 5
    while not running.service.events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.service.events[0].username == "viewer"


def test_verified_tokens_are_cached(users):
    verifier.clear()
    header = f"Bearer {access_token(users['viewer'])}"
    first = verifier.caller(header)
    assert verifier.caller(header) is first
    assert len(verifier.cache) == 1


def test_views_pass_the_request_token_onward(guarded, users):
    name, _ = guarded
    token = access_token(users["viewer"])

    def view(request):
        from django.http import JsonResponse

        return JsonResponse(call(f"{name}.whoami", {"tag": 9}))

    middleware = CorrelationIdMiddleware(view)
    with_token = middleware(RequestFactory().get("/", HTTP_AUTHORIZATION=f"Bearer {token}"))
    assert json.loads(with_token.content)["username"] == "viewer"
    # An anonymous HTTP request never borrows the system identity.
    from cliffracer_core import RemoteError

    with pytest.raises(RemoteError) as raised:
        middleware(RequestFactory().get("/"))
    assert raised.value.code == 401


def test_issue_system_token_prints_a_working_token(guarded):
    name, _ = guarded
    result = subprocess.run(
        [sys.executable, "manage.py", "issue_system_token", "--days", "1"],
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    seen = call(f"{name}.whoami", {"tag": 1}, headers={"Authorization": f"Bearer {token}"})
    assert seen["is_system"] is True
    assert jwt_settings.ALGORITHM == "RS256"


@pytest.mark.parametrize("change", ["delete", "deactivate"])
def test_a_gone_users_token_is_refused_at_once(guarded, users, change):
    name, running = guarded
    header = bearer(users["viewer"])
    assert call(f"{name}.guarded", {"a": 1, "b": 2}, headers=header) == {"total": 3}
    # Saved in the admin, a shell, anywhere: announced on commit, and every service forgets.
    if change == "delete":
        users["viewer"].delete()
    else:
        users["viewer"].is_active = False
        users["viewer"].save()
    expected = "user_not_found" if change == "delete" else "user_inactive"

    def refused() -> bool:
        try:
            call(f"{name}.guarded", {"a": 1, "b": 2}, headers=header)
        except NotAuthenticatedError as error:
            return error.type == expected
        return False

    wait_for(refused, timeout=5, what=f"the token of a {change}d user to be refused")


def test_an_unannounced_change_counts_within_the_check_interval(guarded, users, settings):
    name, running = guarded
    header = bearer(users["viewer"])
    settings.CLIFFRACER = {**settings.CLIFFRACER, "USER_CHECK_INTERVAL": 0.5}
    assert call(f"{name}.guarded", {"a": 1, "b": 2}, headers=header) == {"total": 3}
    # An UPDATE sends no signal, so nobody announces it: the answer read before expires.
    User.objects.filter(pk=users["viewer"].pk).update(is_active=False)

    def refused() -> bool:
        try:
            call(f"{name}.guarded", {"a": 1, "b": 2}, headers=header)
        except NotAuthenticatedError:
            return True
        return False

    wait_for(refused, timeout=5, what="the check interval to pass")


def test_a_gone_users_events_are_refused(guarded, users):
    name, running = guarded
    header = bearer(users["plain"])
    users["plain"].delete()
    publish(f"{name}.happened", Happened(what="ghost"), headers=header)
    wait_for(lambda: running.runner.metrics.events["on_happened"]["refused"] == 1)
    assert running.service.events == []
