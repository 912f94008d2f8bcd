"""Rollout analysis I/O: reads alarms (through the backend) and runs HTTP checks; ``rollout.decide`` judges.

Called by the engine when ``rollout.analysis_due`` says so.  An alarm counts as
failed when it is in ``ALARM`` and its state changed after the rollout began
(one already firing before does not block the fix); a check fails on a
non-2xx answer or a time-out.  A read that cannot be done (throttling, access
denied, an alarm that does not exist, a refused connection to nothing) is
neither pass nor failure: it goes into ``Analysis.errors``.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from reconciler.backends.base import AlarmReader
from reconciler.errors import BackendError
from reconciler.rollout import Analysis
from reconciler.specs import DesiredAnalysis, DesiredCheck


def run_analysis(spec: DesiredAnalysis, reader: object, started_at: float) -> Analysis:
    """One round: every alarm read, every check run."""
    failures, details, errors = 0, [], []
    if spec.alarms:
        if not isinstance(reader, AlarmReader):
            errors.append("this backend cannot read alarms")
        else:
            try:
                found = reader.read_alarms(spec.alarms)
            except BackendError as exc:
                found = {}
                errors.append(f"alarms could not be read: {exc}")
            else:
                for name in spec.alarms:
                    alarm = found.get(name)
                    if alarm is None:
                        errors.append(f"alarm {name} does not exist")
                    elif alarm.state == "ALARM" and alarm.updated_at >= started_at:
                        failures += 1
                        details.append(f"alarm {name} in ALARM")
    for check in spec.checks:
        problem = run_check(check)
        if problem is not None:
            failures += 1
            details.append(f"check {check.url}: {problem}")
    return Analysis(failures, tuple(details), tuple(errors))


def run_check(check: DesiredCheck) -> str | None:
    """None if ``check.url`` answers 2xx within its timeout, else what went wrong."""
    request = urllib.request.Request(check.url, headers={"User-Agent": "reconciler-rollout-check"})
    try:
        with urllib.request.urlopen(request, timeout=check.timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except TimeoutError:
        return f"no answer within {check.timeout:g} s"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"no answer within {check.timeout:g} s" if isinstance(reason, TimeoutError) else f"failed: {reason}"
    return None if 200 <= status < 300 else f"HTTP {status}"
