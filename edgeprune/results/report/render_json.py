"""The machine-readable reports: JSON for scripts (stable keys, ``format:
edgeprune-report``) and JUnit XML for CI, one test case per cell: latency, accuracy and
parity regressions are failures, cells that could not be measured are errors,
inconclusive ones skipped."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from edgeprune.results.report.data import ReportData
from edgeprune.results.report.text import fmt_ms


def render_json(data: ReportData) -> str:
    return json.dumps(data.to_dict(), indent=2, default=str)


def render_junit(data: ReportData) -> str:
    """JUnit XML: a test case per cell; regressions fail, unmeasured cells error."""
    host = (data.run.host or "") if data.run else ""
    suite = ET.Element("testsuite", name=data.title, timestamp=data.generated[:19], hostname=host)
    failures = errors = skipped = 0
    total_time = 0.0
    props = ET.SubElement(suite, "properties")
    if data.run is not None:
        for k, v in (("run_id", data.run.id), ("status", data.run.status), ("git_revision", data.run.git_revision),
                     ("edgeprune_version", data.run.edgeprune_version)):
            ET.SubElement(props, "property", name=k, value="" if v is None else str(v))
    for r in data.rows:
        t = float(r.pooled.sum() / 1000.0)
        total_time += t
        tc = ET.SubElement(suite, "testcase", classname=f"edgeprune.{r.device}.{r.target}",
                           name=f"{r.model} [{r.backend}{' ' + r.variant if r.variant else ''}]", time=f"{t:.3f}")
        lat = r.verdict("latency")
        if r.failed:
            errors += 1
            e = ET.SubElement(tc, "error", message=(r.error or "failed")[:500], type="MeasurementFailed")
            e.text = r.error or ""
        elif r.regressions:
            failures += 1
            msg = "; ".join(f"{v.kind} {v.verdict}: {v.detail.split(';')[0]}" for v in r.regressions)
            f = ET.SubElement(tc, "failure", message=msg[:500], type="Regression")
            f.text = "\n".join(f"{v.kind}: {v.detail}" for v in r.regressions)
        elif lat is not None and lat.verdict == "UNKNOWN":
            skipped += 1
            ET.SubElement(tc, "skipped", message=f"latency inconclusive: {lat.detail.split(';')[0]}"[:500])
        out = [f"median {fmt_ms(r.median_ms)} ms, p90 {fmt_ms(r.p90_ms)} ms over {r.pooled.size} runs"]
        out += [f"{v.kind}: {v.verdict} — {v.detail}" for v in r.verdicts]
        ET.SubElement(tc, "system-out").text = "\n".join(out)
    suite.set("tests", str(len(data.rows)))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    suite.set("time", f"{total_time:.3f}")
    root = ET.Element("testsuites", name="edgeprune", tests=str(len(data.rows)), failures=str(failures),
                      errors=str(errors), skipped=str(skipped), time=f"{total_time:.3f}")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
