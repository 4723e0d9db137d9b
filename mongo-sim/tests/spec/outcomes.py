"""pytest plugin for mongo-sim/tests/spec.rs: writes one line per test to the file named by the
SPEC_OUTCOMES environment variable, as `outcome<TAB>node id<TAB>reason`, sorted by node id.

The outcome is `passed`, `failed` (a failure or an error in any phase, a failing subtest
included) or `skipped` (the runner skipped it: runOnRequirements not met, or a feature the
driver's runner does not support), with the runner's reason for a skip and the first line of
the error for a failure. When a unified test is skipped for its runOnRequirements, the reason
names what the requirements ask that the server does not offer.
"""

import os

import pytest

_outcomes = {}
# Unmet runOnRequirements of skipped unified tests, by node id.
_unmet = {}


def _test_name(description):
    # As pymongo's unified_format.UnifiedSpecTestMeta names a test method.
    return "test_{}".format(description.strip(". ").replace(" ", "_").replace(".", "_"))


def _missing(requirement):
    """What one runOnRequirements entry asks that the server does not offer."""
    from test import client_context
    from test.version import Version

    server = Version(*client_context.version[:3])
    missing = []
    low = requirement.get("minServerVersion")
    if low and Version.from_string(low) > server:
        missing.append(f"server {low}+")
    high = requirement.get("maxServerVersion")
    if high and Version.from_string(high) < server:
        missing.append(f"server {high} or older")
    topologies = requirement.get("topologies")
    if topologies and not client_context.is_topology_type(topologies):
        missing.append("a " + "/".join(topologies) + " topology")
    if requirement.get("auth") is True and not client_context.auth_enabled:
        missing.append("authentication")
    if requirement.get("serverless") == "require":
        missing.append("serverless")
    if requirement.get("csfle"):
        missing.append("client-side encryption")
    for name, value in (requirement.get("serverParameters") or {}).items():
        if client_context.server_parameters.get(name) != value:
            missing.append(f"server parameter {name}={value}")
    return missing


def _unmet_requirements(item):
    spec = getattr(getattr(item, "cls", None), "TEST_SPEC", None)
    if not spec:
        return None
    levels = [spec.get("runOnRequirements") or []]
    for test in spec.get("tests", []):
        if _test_name(test["description"]) == item.name:
            levels.append(test.get("runOnRequirements") or [])
    for requirements in levels:
        alternatives = [_missing(r) for r in requirements]
        if alternatives and all(alternatives):
            return " or ".join(" and ".join(a) for a in alternatives)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and "runOnRequirements not satisfied" in str(report.longrepr):
        unmet = _unmet_requirements(item)
        if unmet:
            _unmet[item.nodeid] = f"runOnRequirements: needs {unmet}"


def _one_line(text):
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            return " ".join(line.split("\t"))[:300]
    return ""


def _skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = longrepr[2]
        return _one_line(reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason)
    return _one_line(longrepr)


def _failure_reason(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return _one_line(crash.message)
    return _one_line(report.longreprtext)


def pytest_runtest_logreport(report):
    outcome, reason = _outcomes.get(report.nodeid, ("passed", ""))
    if outcome == "failed":
        return
    if report.failed:
        _outcomes[report.nodeid] = ("failed", f"{report.when}: {_failure_reason(report)}")
    elif report.skipped and outcome != "skipped":
        reason = _unmet.get(report.nodeid) or _skip_reason(report)
        _outcomes[report.nodeid] = ("skipped", reason)
    elif report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = (outcome, reason)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("SPEC_OUTCOMES")
    if not path:
        return
    with open(path, "w", encoding="utf-8") as out:
        for nodeid in sorted(_outcomes):
            outcome, reason = _outcomes[nodeid]
            out.write(f"{outcome}\t{nodeid}\t{reason}\n")
