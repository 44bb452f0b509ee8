"""Redis ACL users (redis.username + redis.password / password_file), end to end: a real
redis-server whose default user is off, an admin user for the test itself and a `berth` user
limited to Berth's keys and channels (the rule deploy/config/berth.yaml suggests), the real
berth-scheduler and berth-gateway.

- With the right user both daemons work (pools fill, the gateway gets a session, every one of
  their connections is authenticated as `berth`).
- With a wrong password or user they keep running, report "not connected" and log Redis's
  refusal once (not once per retry), and connect by themselves once the user is fixed.

Run as root: BERTH_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_redis_acl.py
"""

import os

import pytest

from conftest import SLOW, Proc, binary, curl, wait_until

ADMIN = ("admin", "admin-" + os.urandom(8).hex())
BERTH_PW = "berth-" + os.urandom(8).hex()
# Berth's keys and channels only, no dangerous commands (FLUSHALL, CONFIG, KEYS, ...).
BERTH_RULES = ["resetkeys", "~berth:*", "resetchannels", "&berth:*", "+@all", "-@dangerous"]
REDIS_ARGS = (["--user", "default", "off",
               "--user", ADMIN[0], "on", ">" + ADMIN[1], "~*", "&*", "+@all",
               "--user", "berth", "on", ">" + BERTH_PW] + BERTH_RULES)


def acl_stack(make_stack, redis_over, **kw):
    over = {"redis": redis_over}
    return make_stack(over, redis_args=REDIS_ARGS, redis_auth=ADMIN, **kw)


def clients_by_user(stack):
    """user name -> number of connections, from CLIENT LIST (the test's own is `admin`)."""
    out = {}
    for line in stack.redis.cmd("CLIENT", "LIST").splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        out[f.get("user")] = out.get(f.get("user"), 0) + 1
    return out


def test_daemons_work_as_an_acl_user(make_stack, tmp_short):
    pw = tmp_short / "redis_password"
    fd = os.open(str(pw), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (BERTH_PW + "\n").encode())
    os.close(fd)
    s = acl_stack(make_stack, {"username": "berth", "password_file": str(pw)})
    r = s.get("/", session="acl-user")
    assert r.status == 200, (r, s.gateway.tail())
    assert len(s.redis.scan(s.key("s:*"))) == 1
    # Every daemon connection is the berth user: scheduler (2), gateway worker (2), admin (1).
    users = clients_by_user(s)
    assert users.get("berth", 0) >= 5, users
    assert set(users) <= {"berth", "admin"}, users
    # The user's limits held: Redis logged no refused command or key.
    assert s.redis.cmd("ACL", "LOG") == [], s.redis.cmd("ACL", "LOG")
    # The control API works as that user too (listing reads the sessions zset).
    lst = s.api("GET", "/v1/sessions")
    assert lst.status == 200 and lst.json()["sessions"], lst


def auth_failures(stack, user):
    """How many AUTH failures Redis's ACL LOG counted for <user>."""
    n = 0
    for e in stack.redis.cmd("ACL", "LOG", 100) or []:
        f = dict(zip(e[0::2], e[1::2]))
        if f.get("reason") == "auth" and f.get("username") == user:
            n += int(f.get("count", 1))
    return n


@pytest.mark.parametrize("user,password", [("berth", "wrong-password"),
                                           ("nobody", BERTH_PW)])
def test_wrong_user_or_password_fails_visibly_and_recovers(make_stack, user, password):
    s = acl_stack(make_stack, {"username": user, "password": password},
                  start_scheduler=False, start_gateway=False, wait_pools=False)
    sched = Proc("scheduler", [binary("berth-scheduler"), "-c", s.config_path], s.base,
                 cwd=str(s.base))
    gw = Proc("gateway", [binary("berth-gateway"), "-c", s.config_path], s.base,
              cwd=str(s.base))
    s.scheduler, s.gateway = sched, gw  # stopped (and checked) with the stack
    # Both keep trying: wait until Redis has refused several attempts of each kind.
    wait_until(lambda: auth_failures(s, user) >= 6, 30 * SLOW, "repeated AUTH failures")
    assert sched.alive(), sched.tail()
    assert gw.alive(), gw.tail()
    h = curl(s.scheduler_url("/healthz"))
    assert h.status == 200 and h.json()["redis"] == "disconnected", h
    ready = curl(s.admin_url("/readyz"))
    assert ready.status == 503 and "redis not connected" in ready.text, ready
    # Each says why, once, with Redis's words, whatever the number of retries.
    for p in (sched, gw):
        log = p.log()
        assert log.count("refused, retrying") == 1, log
        assert "WRONGPASS" in log and "user=%s" % user in log, log
    # The operator fixes the user: both connect without a restart.
    s.redis.cmd("ACL", "SETUSER", user, "on", ">" + password, *BERTH_RULES)
    wait_until(lambda: curl(s.admin_url("/readyz")).status == 200, 30 * SLOW,
               "the gateway to connect once the user is fixed")
    wait_until(lambda: curl(s.scheduler_url("/healthz")).json()["redis"] == "connected",
               30 * SLOW, "the scheduler to connect once the user is fixed")
    s.wait_pool("echo", 1)
    r = s.get("/", session="after-fix")
    assert r.status == 200, (r, gw.tail())
