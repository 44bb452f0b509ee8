"""Counts test results for tests/run: `results.py meson TESTLOG.json` or
`results.py junit PYTEST.xml` prints "PASSED FAILED SKIPPED" on stdout and the names of the
failures on stderr.

meson: a TAP test (tests/harness) counts each of its subtests; a test that failed without a
failing subtest (a crash at exit, a leak report) counts one more failure. Other tests count one.
junit: pytest's errors (setup/teardown failures, e.g. a sanitizer report found when a daemon
stopped) count as failures."""

import json
import re
import sys
import xml.etree.ElementTree as ET

GOOD = {"OK", "EXPECTEDFAIL"}
SKIP = {"SKIP"}


def meson(path):
    p = f = s = 0
    try:
        lines = open(path).read().splitlines()
    except OSError:
        print("no test log %s" % path, file=sys.stderr)
        return 0, 1, 0
    for line in lines:
        t = json.loads(line)
        name, result, out = t["name"], t["result"], t.get("stdout") or ""
        tp = tf = ts = 0
        for m in re.finditer(r"^(not )?ok \d+ - ?([^\n#]*)(#\s*SKIP)?", out, re.M):
            if m.group(1):
                tf += 1
                print("FAIL %s: %s" % (name, m.group(2).strip()), file=sys.stderr)
            elif m.group(3):
                ts += 1
            else:
                tp += 1
        if tp + tf + ts == 0:
            if result in GOOD:
                tp = 1
            elif result in SKIP:
                ts = 1
            else:
                tf = 1
                print("FAIL %s (%s)" % (name, result), file=sys.stderr)
        elif result not in GOOD | SKIP and tf == 0:
            tf = 1
            print("FAIL %s (%s after its subtests)" % (name, result), file=sys.stderr)
        p, f, s = p + tp, f + tf, s + ts
    return p, f, s


def junit(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print("no pytest report %s: %s" % (path, e), file=sys.stderr)
        return 0, 1, 0
    p = f = s = 0
    for case in root.iter("testcase"):
        name = "%s::%s" % (case.get("classname", ""), case.get("name", ""))
        kinds = {c.tag for c in case}
        if kinds & {"failure", "error"}:
            f += 1
            print("FAIL %s" % name, file=sys.stderr)
        elif "skipped" in kinds:
            s += 1
        else:
            p += 1
    return p, f, s


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    print("%d %d %d" % (meson(path) if kind == "meson" else junit(path)))
