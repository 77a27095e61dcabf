// Secret hygiene, run after the whole end-to-end suite: every response the gateway gave and
// every line it (or wrangler) logged, in every test file, must be free of the HF token, the
// admin token, provider keys and gateway keys. (The one response that creates a key is the
// only place that key may appear; the transcript leaves that body out.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";

const DIR = "e2e/artifacts/transcripts";

test("no secret appears in any response or log line of the end-to-end suite", () => {
  const records = readdirSync(DIR)
    .filter((f) => f.endsWith(".jsonl"))
    .flatMap((f) => readFileSync(`${DIR}/${f}`, "utf8").split("\n").filter(Boolean).map((l) => ({ file: f, ...JSON.parse(l) })));
  const secrets = records.filter((r) => r.kind === "secret" && r.text);
  const said = records.filter((r) => r.kind !== "secret");
  const responses = said.filter((r) => r.kind === "response").length;
  const logs = said.filter((r) => r.kind === "log").length;
  // guard against a vacuous pass: the suite must really have been recorded
  assert.ok(secrets.length >= 20, `only ${secrets.length} secrets noted`);
  assert.ok(responses >= 150, `only ${responses} responses recorded`);
  assert.ok(logs >= 50, `only ${logs} log lines recorded`);
  const leaks = [];
  for (const s of secrets) {
    for (const r of said) {
      if (r.text.includes(s.text)) leaks.push(`${s.label} in a ${r.kind} (${r.file}${r.url ? ` ${r.url}` : ""})`);
    }
  }
  assert.deepEqual(leaks, []);
  console.log(`scanned ${responses} responses and ${logs} log lines for ${secrets.length} secrets`);
});
