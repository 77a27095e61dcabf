// The release bundle's size, raw and gzipped, against the budget in bench/size-budget.json.
// `node scripts/size.mjs` prints it; `--check` also fails when the bundle is over budget.
import { readFileSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";

export function bundleSize() {
  const wasm = readFileSync("build/index_bg.wasm");
  return {
    wasm_raw_bytes: wasm.length,
    wasm_gzip_bytes: gzipSync(wasm, { level: 9 }).length,
    js_raw_bytes: statSync("build/index.js").size,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const size = bundleSize();
  const budget = JSON.parse(readFileSync("bench/size-budget.json", "utf8"));
  const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
  console.log(`wasm ${kb(size.wasm_raw_bytes)} raw (budget ${kb(budget.wasm_raw_bytes)}), ${kb(size.wasm_gzip_bytes)} gzipped (budget ${kb(budget.wasm_gzip_bytes)}); js shim ${kb(size.js_raw_bytes)}`);
  const over = ["wasm_raw_bytes", "wasm_gzip_bytes"].filter((k) => size[k] > budget[k]);
  if (process.argv.includes("--check") && over.length) {
    console.error(`bundle over budget: ${over.join(", ")}. Cut what grew, or raise bench/size-budget.json and say why.`);
    process.exit(1);
  }
}
