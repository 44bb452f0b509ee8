"""deploy/: the sample config documents every key and is accepted by both daemons, the systemd
units and Kubernetes manifests are well-formed and carry a config the daemons accept."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD_DIR, REPO, binary

SAMPLE = REPO / "deploy" / "config" / "berth.yaml"


def check_config(path):
    """Runs both daemons' config checks on <path>; returns their outputs."""
    g = subprocess.run([binary("berth-gateway"), "-t", "-c", str(path)], capture_output=True,
                       text=True, timeout=30)
    assert g.returncode == 0, "berth-gateway -t: %s%s" % (g.stdout, g.stderr)
    s = subprocess.run([binary("berth-scheduler"), "--check", "-c", str(path)],
                       capture_output=True, text=True, timeout=30)
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


def test_k8s_manifests(tmp_path):
    yaml = pytest.importorskip("yaml", reason="python3-yaml is needed to read the manifests")
    d = REPO / "deploy" / "k8s"
    docs = []
    for f in sorted(d.glob("*.yaml")):
        docs += [(f.name, doc) for doc in yaml.safe_load_all(f.read_text()) if doc]
    kinds = {}
    for fname, doc in docs:
        assert {"apiVersion", "kind"} <= set(doc), fname
        kinds.setdefault(doc["kind"], []).append(doc)
    for kind in ["Namespace", "ConfigMap", "StatefulSet", "DaemonSet", "Deployment", "Service",
                 "Kustomization"]:
        assert kind in kinds, kind
    kust = kinds["Kustomization"][0]
    assert sorted(kust["resources"]) == sorted(f.name for f in d.glob("*.yaml")
                                               if f.name != "kustomization.yaml")
    ds = kinds["DaemonSet"][0]["spec"]["template"]["spec"]
    assert ds["containers"][0]["securityContext"]["privileged"] is True
    assert ds["containers"][0]["command"][0].endswith("berth-scheduler")
    dep = kinds["Deployment"][0]["spec"]
    assert dep["template"]["spec"]["containers"][0]["command"][0].endswith("berth-gateway")
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
    conf = tmp_path / "berth.yaml"
    conf.write_text(cm["berth-config"]["data"]["berth.yaml"])
    check_config(conf)
