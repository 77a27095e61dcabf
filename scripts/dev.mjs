// `make dev`: serves the built gateway with `wrangler dev` on the sandbox upstream, creates a
// demo key through the admin API, and prints a curl line that streams a completion.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";

const port = Number(process.argv[process.argv.indexOf("--port") + 1] || 8787);
const base = `http://127.0.0.1:${port}`;

// A local admin token, kept with the local state so it survives restarts.
mkdirSync(".wrangler", { recursive: true });
const tokenFile = ".wrangler/dev-admin-token";
if (!existsSync(tokenFile)) writeFileSync(tokenFile, `adm_${randomBytes(24).toString("hex")}\n`, { mode: 0o600 });
const adminToken = readFileSync(tokenFile, "utf8").trim();

const wrangler = spawn(
  "npx",
  ["wrangler", "dev", "--ip", "127.0.0.1", "--port", String(port), "--show-interactive-dev-session=false",
   "--var", "UPSTREAM_URL:sandbox", "--var", `ADMIN_TOKEN:${adminToken}`, "--var", `CORS_ORIGINS:${base}`],
  { stdio: ["ignore", "inherit", "inherit"], env: { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" } },
);
const stop = () => wrangler.kill("SIGINT");
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
wrangler.on("exit", (code) => process.exit(code ?? 0));

async function ready() {
  for (let i = 0; i < 240; i++) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) return true;
    } catch {}
    await new Promise((r) => setTimeout(r, 250));
  }
  return false;
}

if (!(await ready())) {
  console.error("hf-gate did not come up on", base);
  stop();
} else {
  const res = await fetch(`${base}/admin/keys`, {
    method: "POST",
    headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
    body: JSON.stringify({ plan: "pro", name: "make-dev demo" }),
  });
  const key = await res.json();
  console.log(`
hf-gate is serving on ${base} (sandbox upstream, local KV and Durable Objects in .wrangler/state)

  demo key (pro plan, shown once): ${key.key}
  admin token (local only):        ${adminToken}

Stream a chat completion:

  curl -N ${base}/v1/chat/completions \\
    -H 'authorization: Bearer ${key.key}' -H 'content-type: application/json' \\
    -d '{"model":"meta-llama/Llama-3.1-8B-Instruct","stream":true,"messages":[{"role":"user","content":"Hello!"}]}'

Usage: curl ${base}/v1/usage -H 'authorization: Bearer ${key.key}'
Playground: ${base}/   Admin: ${base}/admin
`);
}
