#!/usr/bin/env node
// Compiles contracts/sol/*.sol with the pinned solc-js (package.json) at
// evmVersion london (Energy Web Chain) and writes one artifact per contract
// to contracts/artifacts/NAME.json: ABI, creation and runtime bytecode.
// `--check` compiles and fails if the committed artifacts differ, so the
// artifacts the Rust bindings embed always match the sources.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = __dirname;
const SRC = path.join(ROOT, "sol");
const OUT = path.join(ROOT, "artifacts");
// ReentrantTestToken is a test fixture (contracts/tests/ledger.rs).
const DEPLOYED = ["SettlementLedger", "EnergyCertificates", "DemoEuro", "ReentrantTestToken"];

const sources = {};
for (const file of fs.readdirSync(SRC).filter((f) => f.endsWith(".sol")).sort()) {
  sources[file] = { content: fs.readFileSync(path.join(SRC, file), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: "london",
    optimizer: { enabled: true, runs: 10000 },
    // The IR pipeline: tighter code for the approval loop, and no "stack
    // too deep" in it.
    viaIR: true,
    metadata: { bytecodeHash: "none", appendCBOR: false },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
function findImports(p) {
  const file = path.join(SRC, path.basename(p));
  return fs.existsSync(file) ? { contents: fs.readFileSync(file, "utf8") } : { error: `not found: ${p}` };
}
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
if (errors.length) process.exit(1);

const check = process.argv.includes("--check");
let stale = 0;
for (const [file, contracts] of Object.entries(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    if (!DEPLOYED.includes(name)) continue;
    const artifact = {
      contractName: name,
      sourceName: `contracts/sol/${file}`,
      compiler: `solc-js ${solc.version()}`,
      evmVersion: "london",
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
    const text = JSON.stringify(artifact, null, 2) + "\n";
    const target = path.join(OUT, `${name}.json`);
    if (check) {
      const old = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : "";
      if (old !== text) {
        process.stderr.write(`stale artifact: ${path.relative(process.cwd(), target)} (run: npm run contracts)\n`);
        stale++;
      }
    } else {
      fs.mkdirSync(OUT, { recursive: true });
      fs.writeFileSync(target, text);
      const size = (c.evm.deployedBytecode.object.length / 2) | 0;
      process.stdout.write(`${name}: ${size} bytes of runtime code\n`);
    }
  }
}
if (stale) process.exit(1);
if (check) process.stdout.write("contract artifacts match the sources\n");
