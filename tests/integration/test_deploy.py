"""deploy/: the sample config documents every key and is accepted by both daemons, the systemd
units and Kubernetes manifests are well-formed and carry a config the daemons accept."""

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD_DIR, REPO, binary, free_port, wait_until

SAMPLE = REPO / "deploy" / "config" / "berth.yaml"


def check_config(path, env=None):
    """Runs both daemons' config checks on <path> (with <env> added to the environment);
    returns their outputs."""
    e = dict(os.environ, **(env or {}))
    g = subprocess.run([binary("berth-gateway"), "-t", "-c", str(path)], capture_output=True,
                       text=True, timeout=30, env=e)
    assert g.returncode == 0, "berth-gateway -t: %s%s" % (g.stdout, g.stderr)
    s = subprocess.run([binary("berth-scheduler"), "--check", "-c", str(path)],
                       capture_output=True, text=True, timeout=30, env=e)
    assert s.returncode == 0, "berth-scheduler --check: %s%s" % (s.stdout, s.stderr)
    return g.stdout, s.stdout


SECRET_LINE = re.compile(r"^  api_secret_file: (\S+)$", re.M)


def with_secret_file(path, tmp_path, mode=0o600, content="s" * 40 + "\n"):
    """A copy of the config <path> in <tmp_path> whose scheduler.api_secret_file names a new
    file there (<content>, <mode>): the sample names <sysconfdir>/berth/api_secret, which an
    installation makes. Returns (copy, the path it named, the secret file)."""
    text = Path(path).read_text()
    m = SECRET_LINE.search(text)
    assert m, "no scheduler.api_secret_file in %s" % path
    secret = tmp_path / "api_secret"
    secret.write_text(content)
    os.chmod(secret, mode)
    copy = tmp_path / "berth.yaml"
    copy.write_text(text[:m.start(1)] + str(secret) + text[m.end(1):])
    return copy, m.group(1), secret


def test_built_sample_config_is_valid(tmp_path):
    built = BUILD_DIR / "deploy" / "berth.yaml"
    text = built.read_text()
    assert "@BINDIR@" not in text and "@SYSCONFDIR@" not in text
    echo_dir = str(Path(binary("berth-echo")).parent)
    assert '"%s/berth-echo"' % echo_dir in text
    assert 'ro_binds: ["%s"]' % echo_dir in text
    conf, named, _ = with_secret_file(built, tmp_path)
    assert named.endswith("/berth/api_secret"), named
    gw, sch = check_config(conf)
    assert "1 templates" in gw
    assert "templates=1" in sch and "api_secret=set" in sch
    assert "s" * 40 not in gw + sch  # the secret is never printed


def test_installed_sample_config_is_valid(tmp_path):
    installed = BUILD_DIR / "deploy" / "berth.installed.yaml"
    text = installed.read_text()
    assert "@" not in re.sub(r"#.*", "", text)
    assert "/bin/berth-echo" in text
    check_config(with_secret_file(installed, tmp_path)[0])


def refusals(path):
    """Both daemons' config checks on <path>, which must fail; returns their messages."""
    out = []
    for argv in ([binary("berth-gateway"), "-t", "-c", str(path)],
                 [binary("berth-scheduler"), "--check", "-c", str(path)]):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert p.returncode != 0, (argv, p.stdout)
        out.append(p.stderr)
    return out


def test_sample_config_needs_its_secret_file(tmp_path):
    """No insecure fallback: until the secret file exists (and only its owner may read it),
    neither daemon accepts the sample; the message names the key and the file."""
    conf, _, secret = with_secret_file(BUILD_DIR / "deploy" / "berth.yaml", tmp_path)
    secret.unlink()
    for err in refusals(conf):
        assert "scheduler.api_secret_file: cannot open '%s': No such file" % secret in err, err
    conf, _, secret = with_secret_file(BUILD_DIR / "deploy" / "berth.yaml", tmp_path,
                                       mode=0o644)
    for err in refusals(conf):
        assert "is open to group or others (mode 0644)" in err, err


def config_keys_in_sources():
    """Every key the config parsers accept: the string literals of their `keys` tables."""
    keys = {}
    for path in sorted(list((REPO / "common").glob("*.c")) + list((REPO / "gateway").glob("*.c")) +
                       list((REPO / "scheduler").glob("*.c"))):
        src = str(path.relative_to(REPO))
        text = path.read_text()
        for m in re.finditer(r"static const char \*const (\w*keys\w*)\[\]\s*=\s*\{(.*?)\};",
                             text, re.S):
            for k in re.findall(r"\"([a-z0-9_]+)\"", m.group(2)):
                keys.setdefault(k, set()).add("%s:%s" % (src, m.group(1)))
    return keys


def test_sample_config_documents_every_key():
    keys = config_keys_in_sources()
    assert {"redis", "tenants", "templates", "gateway", "scheduler", "listen", "run_dir",
            "api_keys_sha256", "pool", "ro_binds"} <= set(keys), sorted(keys)
    text = SAMPLE.read_text()
    # a key is documented when it appears as "key:" in the file (set or commented out)
    missing = sorted("%s (%s)" % (k, ", ".join(sorted(w))) for k, w in keys.items()
                     if not re.search(r"(^|[\s{,#-])%s:" % re.escape(k), text, re.M))
    assert not missing, "keys not documented in deploy/config/berth.yaml: %s" % missing


def test_systemd_units(tmp_path):
    d = BUILD_DIR / "deploy"
    units = {}
    for name in ["berth-scheduler.service", "berth-gateway.service"]:
        text = (d / name).read_text()
        assert "@" not in text, "unsubstituted placeholder in %s" % name
        sections, cur = {}, None
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                cur = sections.setdefault(line.strip("[]"), {})
                continue
            k, _, v = line.partition("=")
            cur.setdefault(k, []).append(v)
        assert set(sections) == {"Unit", "Service", "Install"}, sections
        units[name] = sections
    sch = units["berth-scheduler.service"]["Service"]
    assert sch["KillMode"] == ["process"]
    assert sch["ExecStart"][0].split()[0].endswith("/bin/berth-scheduler")
    assert "-c" in sch["ExecStart"][0].split()
    gw = units["berth-gateway.service"]["Service"]
    assert gw["ExecStart"][0].split()[0].endswith("/bin/berth-gateway")
    assert any(" -t " in v for v in gw["ExecStartPre"])
    # the config path the units use is where meson installs the sample
    conf = sch["ExecStart"][0].split()[-1]
    assert conf.endswith("/berth/berth.yaml")
    # The scheduler makes the API secret the installed config names, once, root's only.
    named = SECRET_LINE.search((d / "berth.installed.yaml").read_text()).group(1)
    assert named == os.path.dirname(conf) + "/api_secret", (named, conf)
    make = [v for v in sch["ExecStartPre"] if "api_secret" in v]
    assert len(make) == 1, sch["ExecStartPre"]
    argv = shlex.split(make[0].replace("$$", "$"))  # what systemd runs
    assert argv[:2] == ["/bin/sh", "-c"], argv
    target = tmp_path / "api_secret"
    script = argv[2].replace(named, str(target))
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=30)
    first = target.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", first), first
    assert (target.stat().st_mode & 0o777) == 0o600, oct(target.stat().st_mode)
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=30)
    assert target.read_text() == first  # kept, not replaced
    analyze = "/usr/bin/systemd-analyze"
    if os.path.exists(analyze):
        for name in units:
            p = subprocess.run([analyze, "verify", "--man=no", str(d / name)],
                               capture_output=True, text=True, timeout=60)
            bad = [line for line in (p.stderr + p.stdout).splitlines()
                   if name in line and "is not executable" not in line]
            assert not bad, bad


def k8s_kinds():
    """kind -> [documents] of every manifest in deploy/k8s (and the Kustomization)."""
    yaml = pytest.importorskip("yaml", reason="python3-yaml is needed to read the manifests")
    kinds = {}
    for f in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                assert {"apiVersion", "kind"} <= set(doc), f.name
                kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


K8S = REPO / "deploy" / "k8s"
SECRET_DIR = "/etc/berth-secrets"


def pod_spec(kinds, kind, app):
    for w in kinds[kind]:
        if w["spec"]["template"]["metadata"]["labels"].get("app") == app:
            return w["spec"]["template"]["spec"]
    raise AssertionError("no %s for app %s" % (kind, app))


def k8s_config_with_secret_files(kinds, tmp_path):
    """The ConfigMap's berth.yaml with its secret files (from the Secret, mounted at
    SECRET_DIR in the pods) replaced by files in <tmp_path> that hold what the Secret would."""
    text = {c["metadata"]["name"]: c for c in kinds["ConfigMap"]}["berth-config"]["data"][
        "berth.yaml"]
    named = re.findall(r"^\s*(?:api_secret_file|password_file): (\S+)$", text, re.M)
    assert sorted(named) == [SECRET_DIR + "/api_secret", SECRET_DIR + "/redis_password"], named
    for path in named:
        f = tmp_path / os.path.basename(path)
        f.write_text(os.urandom(32).hex() + "\n")
        os.chmod(f, 0o400)  # the pods' defaultMode
        text = text.replace(path, str(f))
    conf = tmp_path / "berth.yaml"
    conf.write_text(text)
    return conf


def test_k8s_manifests(tmp_path):
    kinds = k8s_kinds()
    for kind in ["Namespace", "ConfigMap", "StatefulSet", "DaemonSet", "Deployment", "Service",
                 "NetworkPolicy", "Kustomization"]:
        assert kind in kinds, kind
    kust = kinds["Kustomization"][0]
    assert sorted(kust["resources"]) == sorted(f.name for f in K8S.glob("*.yaml")
                                               if f.name != "kustomization.yaml")
    ds = pod_spec(kinds, "DaemonSet", "berth-scheduler")
    assert ds["containers"][0]["command"][0].endswith("berth-scheduler")
    dep = pod_spec(kinds, "Deployment", "berth-gateway")
    assert dep["containers"][0]["command"][0].endswith("berth-gateway")
    # labels and selectors line up
    for w in kinds["DaemonSet"] + kinds["Deployment"] + kinds["StatefulSet"]:
        assert w["spec"]["selector"]["matchLabels"].items() <= \
            w["spec"]["template"]["metadata"]["labels"].items()
    labels = [w["spec"]["template"]["metadata"]["labels"] for w in
              kinds["Deployment"] + kinds["StatefulSet"]]
    for svc in kinds["Service"]:
        assert any(svc["spec"]["selector"].items() <= lab.items() for lab in labels), svc
    # every ConfigMap reference exists, and the config is accepted by both daemons
    cm = {c["metadata"]["name"]: c for c in kinds["ConfigMap"]}
    for w in kinds["DaemonSet"] + kinds["Deployment"]:
        for v in w["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in cm
    # NODE_IP: the scheduler pod's, from the downward API (status.hostIP)
    env = {e["name"]: e for e in ds["containers"][0]["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    _, out = check_config(k8s_config_with_secret_files(kinds, tmp_path), {"NODE_IP": "192.0.2.7"})


def test_k8s_secrets_come_from_one_generated_secret():
    """No secret in the repository: kustomize makes berth-secrets from deploy/k8s/secrets/
    (ignored by git); every pod that needs a key mounts it where the config says, owner-only
    for the daemons (which refuse anything else), with no fsGroup that would add group read."""
    kinds = k8s_kinds()
    gen = {g["name"]: g for g in kinds["Kustomization"][0]["secretGenerator"]}
    assert sorted(gen["berth-secrets"]["files"]) == ["secrets/api_secret",
                                                     "secrets/redis_password"]
    assert "Secret" not in kinds  # nothing to leak, no default to forget to change
    assert "/deploy/k8s/secrets/" in (REPO / ".gitignore").read_text().splitlines()
    for kind, app, keys in [("DaemonSet", "berth-scheduler", None),
                            ("Deployment", "berth-gateway", None),
                            ("StatefulSet", "berth-redis", ["redis_password"])]:
        spec = pod_spec(kinds, kind, app)
        vols = {v["name"]: v for v in spec["volumes"]}
        sv = [v for v in vols.values() if "secret" in v]
        assert len(sv) == 1 and sv[0]["secret"]["secretName"] == "berth-secrets", (app, sv)
        mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == sv[0]["name"]]
        assert mounts and mounts[0]["mountPath"] == SECRET_DIR and mounts[0]["readOnly"], mounts
        if keys is None:  # berth daemons: both keys, 0400, root, no fsGroup
            assert sv[0]["secret"]["defaultMode"] == 0o400, app
            assert "items" not in sv[0]["secret"]
            assert "fsGroup" not in spec.get("securityContext", {}), app
        else:
            assert [i["key"] for i in sv[0]["secret"]["items"]] == keys


def test_k8s_network_policy():
    kinds = k8s_kinds()
    pols = {p["metadata"]["name"]: p["spec"] for p in kinds["NetworkPolicy"]}
    deny = pols["default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    by_app = {}
    for name, p in pols.items():
        app = p["podSelector"].get("matchLabels", {}).get("app")
        if app:
            by_app.setdefault(app, []).append(p)

    def sources(app, port):
        out = []
        for p in by_app.get(app, []):
            for rule in p.get("ingress", []):
                if any(pt["port"] == port for pt in rule.get("ports", [])):
                    out.append(rule.get("from"))
        return out
    # Redis: only the gateway and scheduler pods (and, since they use the host network, the
    # nodes' addresses); nothing else of Redis is open.
    (redis_from,) = sources("berth-redis", 6379)
    apps = sorted(f["podSelector"]["matchLabels"]["app"] for f in redis_from if "podSelector" in f)
    assert apps == ["berth-gateway", "berth-scheduler"], redis_from
    assert [f for f in redis_from if "ipBlock" in f], redis_from
    assert all(set(f) <= {"podSelector", "ipBlock"} for f in redis_from), redis_from
    assert len(by_app["berth-redis"]) == 1 and len(by_app["berth-redis"][0]["ingress"]) == 1
    # The scheduler API and the instance relay: only gateways (and, since they use the host
    # network, the nodes' addresses); nothing else of the scheduler is open.
    (api_from,) = sources("berth-scheduler", 9191)
    (relay_from,) = sources("berth-scheduler", 7070)
    assert api_from == relay_from
    assert [f for f in api_from if "podSelector" in f] == [
        {"podSelector": {"matchLabels": {"app": "berth-gateway"}}}], api_from
    assert [f for f in api_from if "ipBlock" in f] == [f for f in redis_from if "ipBlock" in f]
    assert all(set(f) <= {"podSelector", "ipBlock"} for f in api_from), api_from
    assert len(by_app["berth-scheduler"]) == 1
    assert len(by_app["berth-scheduler"][0]["ingress"]) == 1
    # The data plane: from anywhere.
    assert sources("berth-gateway", 8080) == [None]
    # The pods carry the labels the policies select.
    assert pod_spec(kinds, "StatefulSet", "berth-redis")
    cm = {c["metadata"]["name"]: c for c in kinds["ConfigMap"]}["berth-config"]
    conf = cm["data"]["berth.yaml"]
    assert "api_listen: 0.0.0.0:9191" in conf and "api_advertise: $NODE_IP" in conf
    assert "listen: 0.0.0.0:7070" in conf and "advertise: $NODE_IP" in conf
    ports = {p["name"]: p["containerPort"] for p in
             pod_spec(kinds, "DaemonSet", "berth-scheduler")["containers"][0]["ports"]}
    assert ports["api"] == 9191 and ports["relay"] == 7070


def test_k8s_scheduler_pod_is_not_privileged():
    """Only the capabilities deploy/k8s/README.md justifies as needed now; AppArmor unconfined
    (its default denies mount), seccomp the runtime's default; no Bidirectional propagation
    (privileged only)."""
    kinds = k8s_kinds()
    ds = pod_spec(kinds, "DaemonSet", "berth-scheduler")
    c = ds["containers"][0]
    sc = c["securityContext"]
    assert sc.get("privileged") in (None, False), sc
    assert sc["capabilities"]["drop"] == ["ALL"]
    added = set(sc["capabilities"]["add"])
    readme = (K8S / "README.md").read_text()
    needed = set(re.findall(r"^\| `CAP_(\w+)` \| yes \|", readme, re.M))
    assert added == needed == {"SYS_ADMIN", "SETUID", "SETGID", "KILL", "SYS_PTRACE"}, (
        added, needed)
    assert sc["procMount"] == "Unmasked"
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    ann = kinds["DaemonSet"][0]["spec"]["template"]["metadata"]["annotations"]
    assert ann["container.apparmor.security.beta.kubernetes.io/" + c["name"]] == "unconfined"
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "allowPrivilegeEscalation" not in sc  # refused by the API with CAP_SYS_ADMIN
    for m in c["volumeMounts"]:
        assert m.get("mountPropagation") in (None, "None", "HostToContainer"), m
    gw = pod_spec(kinds, "Deployment", "berth-gateway")["containers"][0]["securityContext"]
    assert gw["capabilities"] == {"drop": ["ALL"]} and gw["allowPrivilegeEscalation"] is False


def test_k8s_redis_start_script(tmp_path):
    """The Redis container's own start script and readiness probe, run against the real
    redis-server: the password comes from the Secret's file, Redis asks for it, the probe
    passes with it; a short or empty password stops the start (an empty requirepass would
    mean no password at all)."""
    kinds = k8s_kinds()
    c = pod_spec(kinds, "StatefulSet", "berth-redis")["containers"][0]
    assert c["command"][:2] == ["sh", "-c"]
    port = free_port()
    secrets, data = tmp_path / "secrets", tmp_path / "data"
    secrets.mkdir()
    data.mkdir()

    def local(script):
        return (script.replace(SECRET_DIR, str(secrets)).replace("/data", str(data))
                .replace("--protected-mode no", "--protected-mode no --port %d --bind 127.0.0.1"
                         % port).replace("redis-cli", "redis-cli -p %d" % port))
    script = local(c["command"][2])
    probe = local(c["readinessProbe"]["exec"]["command"][2])
    pw = secrets / "redis_password"
    for bad, why in [("", "at least 16"), ("short", "at least 16"),
                     ("has space in it 1234", "letters, digits")]:
        pw.write_text(bad + "\n")
        p = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and why in p.stderr, (bad, p.returncode, p.stderr)
    secret = os.urandom(16).hex()
    pw.write_text(secret + "\n")
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: subprocess.run(["sh", "-c", probe], timeout=10).returncode == 0,
                   20, "the readiness probe to pass")
        ps = subprocess.run(["ps", "-o", "args=", "-p", str(proc.pid)], capture_output=True,
                            text=True).stdout
        assert "redis-server" in ps and secret not in ps, ps  # not on the command line
        anon = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                              text=True, timeout=10).stdout
        assert "NOAUTH" in anon, anon
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_k8s_probes_use_the_health_listeners():
    """Issue 14: the probes go to each daemon's health listener (its own connections, on the
    node's loopback), not to the admin port or the scheduler API, which clients can fill; the
    port is declared and no NetworkPolicy rule opens it."""
    yaml = pytest.importorskip("yaml", reason="python3-yaml is needed to read the manifests")
    kinds = k8s_kinds()
    cm = {c["metadata"]["name"]: c for c in kinds["ConfigMap"]}["berth-config"]
    conf = yaml.safe_load(cm["data"]["berth.yaml"])
    pols = [p["spec"] for p in kinds["NetworkPolicy"]]
    opened = {pt["port"] for p in pols for rule in p.get("ingress", [])
              for pt in rule.get("ports", [])}
    for kind, app, section, paths in [
            ("Deployment", "berth-gateway", "gateway", {"/healthz", "/readyz"}),
            ("DaemonSet", "berth-scheduler", "scheduler", {"/healthz"})]:
        host, port = conf[section]["health_listen"].rsplit(":", 1)
        assert host == "127.0.0.1", conf[section]
        port = int(port)
        assert port not in (int(conf[section].get("admin_listen", ":0").rsplit(":", 1)[1]),
                            int(conf[section].get("api_listen", ":0").rsplit(":", 1)[1]))
        c = pod_spec(kinds, kind, app)["containers"][0]
        assert {"name": "health", "containerPort": port} in c["ports"], c["ports"]
        seen = set()
        for probe in ("livenessProbe", "readinessProbe"):
            g = c[probe]["httpGet"]
            assert (g["host"], g["port"]) == ("127.0.0.1", port), (app, probe, g)
            seen.add(g["path"])
        assert seen == paths, (app, seen)
        assert port not in opened, (app, port)
