// Parses a DTDL model with Microsoft's DTDL parser (DTDLParser for .NET, compiled to
// WebAssembly, as @digicatapult/dtdl-parser ships it): the independent judge of
// `opcua-connector dtdl`'s output (tests/interop/test_dtdl.py).
//
// Usage: node dtdl_check.mjs MODEL.json
// Prints one JSON line: {"parser": "...", "elements": [{"id", "kind", "name", "dtdl"}...]} with every
// element the parser found, and exits 0; or prints the parser's errors and exits 1.

import { readFileSync } from 'node:fs';
import { getInterop } from '@digicatapult/dtdl-parser';

const file = process.argv[2];
if (!file) {
  console.error('usage: node dtdl_check.mjs MODEL.json');
  process.exit(2);
}
const parser = await getInterop();
let parsed;
try {
  parsed = JSON.parse(parser.parse(readFileSync(file, 'utf-8')));
} catch (e) {
  const text = typeof e === 'string' ? e : (e && e.message) || String(e);
  console.error(`DTDL parser (${parser.parserVersion()}) refused ${file}:\n${text}`);
  process.exit(1);
}
const elements = Object.entries(parsed).map(([id, e]) => ({
  id,
  kind: e.EntityKind,
  name: e.name ?? null,
  dtdl: e.languageMajorVersion ?? null,
}));
console.log(JSON.stringify({ parser: parser.parserVersion(), elements }));
