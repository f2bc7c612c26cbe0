import json
import stat
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from tests.roles import restore_roles

pytestmark = pytest.mark.django_db


@pytest.fixture
def var_dir(settings, tmp_path):
    """VAR_DIR in a temporary folder, with DEBUG on as on a development machine."""
    restore_roles()  # a transactional test before this one may have flushed the groups
    settings.VAR_DIR = tmp_path
    settings.DEBUG = True
    return tmp_path


def demo_users() -> str:
    out = StringIO()
    call_command("demo_users", stdout=out)
    return out.getvalue()


def stored(var_dir) -> dict[str, str]:
    content = json.loads((var_dir / "demo-users.json").read_text())
    return {username: entry["password"] for username, entry in content.items()}


def test_demo_users_are_created_with_random_passwords_in_a_private_file(var_dir):
    output = demo_users()

    passwords = stored(var_dir)
    assert set(passwords) == {"demo-customer", "demo-operator"}
    assert passwords["demo-customer"] != passwords["demo-operator"]
    assert stat.S_IMODE((var_dir / "demo-users.json").stat().st_mode) == 0o600
    for username, group in (("demo-customer", "customer"), ("demo-operator", "operator")):
        user = User.objects.get(username=username)
        assert user.check_password(passwords[username])
        assert list(user.groups.values_list("name", flat=True)) == [group]
        assert user.email == f"{username}@example.com"
        assert passwords[username] in output


def test_a_second_run_prints_the_stored_passwords_and_changes_nothing(var_dir):
    demo_users()
    first = stored(var_dir)

    output = demo_users()

    assert stored(var_dir) == first
    assert all(password in output for password in first.values())
    assert User.objects.filter(username__startswith="demo-").count() == 2


def test_without_the_file_the_passwords_are_reset(var_dir):
    demo_users()
    old = stored(var_dir)
    (var_dir / "demo-users.json").unlink()

    demo_users()

    new = stored(var_dir)
    assert new.keys() == old.keys() and not set(new.values()) & set(old.values())
    for username, password in new.items():
        assert User.objects.get(username=username).check_password(password)


def test_no_demo_users_when_debug_is_off(var_dir, settings):
    settings.DEBUG = False

    output = demo_users()

    assert "DEBUG is off" in output
    assert not (var_dir / "demo-users.json").exists()
    assert not User.objects.filter(username__startswith="demo-").exists()
